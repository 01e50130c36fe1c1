//! `--jwt-public-key`: an identity provider's public key, read from a PEM file.
//! RSA keys (of at least 2,048 bits) verify RS256 tokens, EC P-256 keys ES256.

use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, DecodingKey};

/// Shortest RSA public key accepted, in bits.
const MIN_RSA_BITS: usize = 2048;

/// Why `--jwt-public-key` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the key file: {0}")]
    Read(#[from] std::io::Error),
    #[error("not a supported public key: expected a PEM `PUBLIC KEY` (RSA, or EC on curve P-256) or `RSA PUBLIC KEY`")]
    Unsupported,
    #[error("the RSA key has {0} bits; at least {MIN_RSA_BITS} are required")]
    WeakRsa(usize),
}

/// A public key for RS256 (RSA) or ES256 (EC P-256) tokens, read from a PEM file.
#[derive(Clone, Debug)]
pub struct PublicKey {
    /// Where it was read from (for `--print-config` and logs).
    pub path: PathBuf,
    alg: Algorithm,
    key: DecodingKey,
}

impl PublicKey {
    /// Read and parse a PEM file; the key type decides the algorithm.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let pem = std::fs::read_to_string(path)?;
        let (alg, key) = Self::parse(&pem)?;
        Ok(PublicKey { path: path.to_owned(), alg, key })
    }

    /// The key tokens are checked against.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }

    /// The algorithm tokens must be signed with to be checked against this key.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    fn parse(pem: &str) -> Result<(Algorithm, DecodingKey), KeyError> {
        use rsa::pkcs1::DecodeRsaPublicKey;
        use rsa::pkcs8::DecodePublicKey;
        use rsa::traits::PublicKeyParts;
        let rsa = rsa::RsaPublicKey::from_public_key_pem(pem)
            .or_else(|_| rsa::RsaPublicKey::from_pkcs1_pem(pem));
        if let Ok(k) = rsa {
            let bits = k.size() * 8;
            if bits < MIN_RSA_BITS {
                return Err(KeyError::WeakRsa(bits));
            }
            let key =
                DecodingKey::from_rsa_raw_components(&k.n().to_bytes_be(), &k.e().to_bytes_be());
            return Ok((Algorithm::RS256, key));
        }
        if let Ok(k) = p256::PublicKey::from_public_key_pem(pem) {
            let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&k, false);
            return Ok((Algorithm::ES256, DecodingKey::from_ec_der(point.as_bytes())));
        }
        Err(KeyError::Unsupported)
    }
}
