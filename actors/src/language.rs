//! Languages as clients name them: the shape of a tag ([`parse_tag`]) and the
//! bounded set of languages that get their own metric series ([`LanguageSeries`]).
//! Who may search in which language (the allow-list) is checked in
//! [`crate::session::validate`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The label of the per-language series that sums every language without its own.
pub const OTHER: &str = "other";

/// A language tag of BCP 47 shape, lower-cased: a primary subtag of 2–3 ASCII
/// letters, then any `-`-separated subtags of 1–8 ASCII letters or digits (`en`,
/// `pt-br`, `zh-hant-tw`, `es-419`). `None` for anything else. The shape only: the
/// registry of subtags is not consulted, so `xx-yy` passes (an allow-list narrows
/// it, see `EngineConfig::languages`).
pub fn parse_tag(raw: &str) -> Option<String> {
    let mut parts = raw.split('-');
    let primary = parts.next()?;
    if !(2..=3).contains(&primary.len()) || !primary.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    for sub in parts {
        if !(1..=8).contains(&sub.len()) || !sub.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
    }
    Some(raw.to_ascii_lowercase())
}

/// Between a language and a part number in the name of a part's pool (`en~2`,
/// see `EngineConfig::language_parts`). No language tag contains it.
pub const PART_MARK: char = '~';

/// The language a pool belongs to: `en` for `en` and for its parts `en~0`, `en~1`.
pub fn family(pool: &str) -> &str {
    pool.split_once(PART_MARK).map_or(pool, |(language, _)| language)
}

/// Whether two pools are parts of one split language (`en~0` and `en~3`).
pub fn siblings(a: &str, b: &str) -> bool {
    a.contains(PART_MARK) && b.contains(PART_MARK) && family(a) == family(b)
}

/// The pool a search of `user` in `language` starts in when the language is split
/// into `parts`: `LANG~P`, P from a hash of the user id (FNV-1a, the same on every
/// node and every build), so a user's searches start in one known part. With
/// one part, the language's own pool.
pub fn home_pool(language: &str, user: &str, parts: u16) -> String {
    if parts <= 1 {
        return language.to_owned();
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{language}{PART_MARK}{}", h % u64::from(parts))
}

/// The languages admitted to their own `rendezvous_pool_waiting_by_language`
/// series, at most `cap` of them, shared by every pool shard; the rest are summed
/// under [`OTHER`]. Admission is first come (the configured default and allow-list
/// first) and sticky: the Prometheus exporter cannot delete a series, so a
/// language once shown stays, and the cap is what bounds them.
#[derive(Debug)]
pub struct LanguageSeries {
    cap: usize,
    /// A mutex, not a DashMap: shards take it once per pool report, briefly.
    admitted: Mutex<HashSet<Arc<str>>>,
}

impl LanguageSeries {
    /// Room for `cap` languages, `first` admitted at once (as many as fit).
    pub fn new<'a>(cap: usize, first: impl IntoIterator<Item = &'a str>) -> Self {
        let mut admitted = HashSet::new();
        for lang in first {
            if admitted.len() < cap {
                admitted.insert(Arc::from(lang.to_ascii_lowercase()));
            }
        }
        Self { cap, admitted: Mutex::new(admitted) }
    }

    /// For each language, whether it has its own series (admitting new ones while
    /// there is room).
    pub fn admit(&self, languages: &[&Arc<str>]) -> Vec<bool> {
        let mut set = self.admitted.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        languages
            .iter()
            .map(|lang| {
                if set.contains(*lang) {
                    return true;
                }
                if set.len() < self.cap {
                    set.insert((*lang).clone());
                    return true;
                }
                false
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_named_after_their_language_and_spread_users() {
        assert_eq!(home_pool("en", "alice", 1), "en");
        let home = home_pool("pt-br", "alice", 4);
        assert_eq!(family(&home), "pt-br");
        assert_eq!(home, home_pool("pt-br", "alice", 4), "the same user, the same part");
        assert_eq!((family("en"), family("en~3")), ("en", "en"));
        assert!(siblings("en~0", "en~3"));
        assert!(!siblings("en", "en~3") && !siblings("en~0", "fr~0") && !siblings("en", "en"));
        // 4,000 users over 4 parts: each gets roughly its quarter.
        let mut count = [0usize; 4];
        for i in 0..4_000 {
            let pool = home_pool("en", &format!("user-{i}"), 4);
            let part: usize =
                pool.rsplit(PART_MARK).next().and_then(|p| p.parse().ok()).expect("a part number");
            count[part] += 1;
        }
        assert!(count.iter().all(|n| (850..=1150).contains(n)), "{count:?}");
        assert!(parse_tag(&home).is_none(), "a part's name is never a client's language");
    }

    #[test]
    fn well_formed_tags_pass_lowercased() {
        for (raw, norm) in [
            ("en", "en"),
            ("pt-BR", "pt-br"),
            ("zh-Hant-TW", "zh-hant-tw"),
            ("es-419", "es-419"),
            ("EN", "en"),
            ("yue", "yue"),
            ("de-CH-1901", "de-ch-1901"),
            ("en-x-a", "en-x-a"),
        ] {
            assert_eq!(parse_tag(raw).as_deref(), Some(norm), "{raw}");
        }
    }

    #[test]
    fn anything_else_is_refused() {
        for raw in [
            "",
            "e",
            "engl",
            "english",
            "e1",
            "12",
            "en_US",
            "en-",
            "-en",
            "en--us",
            "en-toolongsub",
            "en us",
            "ën",
            "en-ü",
            "lt12345w0",
            "other",
        ] {
            assert_eq!(parse_tag(raw), None, "{raw:?}");
        }
    }

    #[test]
    fn series_are_capped_first_come_and_sticky() {
        let s = LanguageSeries::new(3, ["EN"]);
        let (en, fr, de, it) = (Arc::from("en"), Arc::from("fr"), Arc::from("de"), Arc::from("it"));
        assert_eq!(s.admit(&[&fr, &de, &it]), [true, true, false], "en took a slot first");
        assert_eq!(s.admit(&[&it, &en]), [false, true]);
        assert_eq!(s.admit(&[&fr]), [true], "admitted ones stay");
        let none = LanguageSeries::new(0, ["en"]);
        assert_eq!(none.admit(&[&en]), [false], "a cap of 0 sums everything under other");
    }
}
