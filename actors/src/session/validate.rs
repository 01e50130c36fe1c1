//! Validation and normalization of client input, as pure functions. Every limit is
//! a setting ([`EngineConfig`]); every failure names the field.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::config::EngineConfig;
use crate::error::EngineError;
use crate::ids::{Interest, UserId, PUBLIC_PREFIX};
use crate::matching::pool::{Criteria, Roam};

fn chars(s: &str) -> usize {
    s.chars().count()
}

fn name(field: &str, raw: &str, cfg: &EngineConfig) -> Result<String, EngineError> {
    let v = raw.trim().to_lowercase();
    if chars(&v) > cfg.max_name_chars {
        return Err(EngineError::TooLarge(format!(
            "{field} is longer than {} characters",
            cfg.max_name_chars
        )));
    }
    if v.chars().any(char::is_control) {
        return Err(EngineError::BadRequest(format!("{field} contains control characters")));
    }
    Ok(v)
}

/// Normalize a `find_match`: interests lower-cased, trimmed, sorted, deduplicated;
/// language defaulted; group size 2–8; wait capped by the server's search timeout.
pub fn search(
    interests: &[String],
    language: Option<&str>,
    region: Option<&str>,
    group_size: Option<u8>,
    max_wait_ms: Option<u64>,
    cfg: &EngineConfig,
) -> Result<(Criteria, Duration), EngineError> {
    if interests.len() > cfg.max_interests {
        return Err(EngineError::TooLarge(format!("at most {} interests", cfg.max_interests)));
    }
    let mut norm: Vec<Interest> = Vec::with_capacity(interests.len());
    for raw in interests {
        let v = raw.trim().to_lowercase();
        if v.is_empty() {
            return Err(EngineError::BadRequest("interests must not be empty strings".into()));
        }
        if chars(&v) > cfg.max_interest_chars {
            return Err(EngineError::TooLarge(format!(
                "interest `{}…` is longer than {} characters",
                v.chars().take(16).collect::<String>(),
                cfg.max_interest_chars
            )));
        }
        if v.chars().any(char::is_control) {
            return Err(EngineError::BadRequest("interests contain control characters".into()));
        }
        norm.push(Interest::from(v));
    }
    norm.sort();
    norm.dedup();
    // No language (or a blank one): homed in the default language's pool, from
    // where it may roam to other languages' pools (`matching::roaming`), unless
    // the default is "" (such searches then share their own pool).
    let language = language.filter(|l| !l.trim().is_empty());
    let roam = if language.is_none() && !cfg.default_language.is_empty() {
        Roam::AnyLanguage
    } else {
        Roam::Stays
    };
    let language = match language.map(|l| self::language(l, cfg)).transpose()? {
        Some(l) => l,
        None => cfg.default_language.to_lowercase(),
    };
    let region = region.map(|r| name("region", r, cfg)).transpose()?.filter(|r| !r.is_empty());
    let group_size = group_size.unwrap_or(2);
    if !(2..=8).contains(&group_size) {
        return Err(EngineError::BadRequest("group_size must be between 2 and 8".into()));
    }
    let wait = match max_wait_ms {
        Some(0) => return Err(EngineError::BadRequest("max_wait_ms must be positive".into())),
        Some(ms) => ms.min(cfg.search_timeout_ms),
        None => cfg.search_timeout_ms,
    };
    Ok((
        Criteria {
            interests: norm,
            language: Arc::from(language),
            roam,
            region: region.map(Arc::from),
            group_size,
        },
        Duration::from_millis(wait),
    ))
}

/// `criteria` of `user`'s search placed in the part of its language it starts in,
/// when that language is split (`EngineConfig::language_parts`); unchanged
/// otherwise. Placing placed criteria again changes nothing.
pub fn place(mut criteria: Criteria, user: &str, cfg: &EngineConfig) -> Criteria {
    let language = crate::language::family(&criteria.language);
    let parts = cfg.parts_of(language);
    if parts > 1 {
        criteria.language = Arc::from(crate::language::home_pool(language, user, parts));
        if criteria.roam == Roam::Stays {
            criteria.roam = Roam::Parts;
        }
    }
    criteria
}

/// A `find_match` language: a tag of BCP 47 shape ([`crate::language::parse_tag`]),
/// lower-cased, and one of `languages` when that allow-list is set. Blank means
/// the default language.
pub fn language(raw: &str, cfg: &EngineConfig) -> Result<String, EngineError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(cfg.default_language.to_lowercase());
    }
    if chars(raw) > cfg.max_name_chars {
        return Err(EngineError::TooLarge(format!(
            "language is longer than {} characters",
            cfg.max_name_chars
        )));
    }
    let Some(tag) = crate::language::parse_tag(raw) else {
        return Err(EngineError::BadRequest(
            "language must be a language tag: 2 or 3 letters, then optional `-` subtags of \
             1 to 8 letters or digits (en, pt-BR, zh-Hant-TW, es-419)"
                .into(),
        ));
    };
    if !cfg.languages.is_empty() && !cfg.languages.iter().any(|l| l.eq_ignore_ascii_case(&tag)) {
        return Err(EngineError::BadRequest(format!(
            "language `{tag}` is not offered here; use one of: {}",
            cfg.languages.join(", ")
        )));
    }
    Ok(tag)
}

/// A `report`'s reason: trimmed, at most `max_report_reason_chars`, no control
/// characters but line breaks and tabs.
pub fn report_reason(raw: &str, cfg: &EngineConfig) -> Result<String, EngineError> {
    let v = raw.trim();
    if chars(v) > cfg.max_report_reason_chars {
        return Err(EngineError::TooLarge(format!(
            "reason is longer than {} characters",
            cfg.max_report_reason_chars
        )));
    }
    if v.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(EngineError::BadRequest("reason contains control characters".into()));
    }
    Ok(v.to_owned())
}

/// A room id in a request: non-empty, bounded.
pub fn room_id<'a>(raw: &'a str, cfg: &EngineConfig) -> Result<&'a str, EngineError> {
    if raw.is_empty() {
        return Err(EngineError::BadRequest("room_id must not be empty".into()));
    }
    if chars(raw) > cfg.max_name_chars + PUBLIC_PREFIX.len() {
        return Err(EngineError::TooLarge("room_id is too long".into()));
    }
    Ok(raw)
}

/// A public room name for `join`: `pub:` and at least one more character.
pub fn public_room<'a>(raw: &'a str, cfg: &EngineConfig) -> Result<&'a str, EngineError> {
    let id = room_id(raw, cfg)?;
    match id.strip_prefix(PUBLIC_PREFIX) {
        Some(rest) if !rest.trim().is_empty() && !rest.chars().any(char::is_control) => Ok(id),
        _ => Err(EngineError::BadRequest(format!(
            "only named public rooms (`{PUBLIC_PREFIX}name`) can be joined"
        ))),
    }
}

/// A user id named in a request (`block`, `signal.to`).
pub fn user_id(raw: &str, cfg: &EngineConfig) -> Result<UserId, EngineError> {
    if raw.is_empty() {
        return Err(EngineError::BadRequest("user_id must not be empty".into()));
    }
    if chars(raw) > cfg.max_name_chars {
        return Err(EngineError::TooLarge("user_id is too long".into()));
    }
    Ok(UserId::from(raw))
}

/// Chat text: non-blank, at most `max_text_chars` characters.
pub fn text(raw: &str, cfg: &EngineConfig) -> Result<(), EngineError> {
    if raw.trim().is_empty() {
        return Err(EngineError::BadRequest("text must not be empty".into()));
    }
    if chars(raw) > cfg.max_text_chars {
        return Err(EngineError::TooLarge(format!(
            "text is longer than {} characters",
            cfg.max_text_chars
        )));
    }
    Ok(())
}

/// Client-chosen message id, echoed in the ack.
pub fn client_msg_id(raw: Option<&str>, cfg: &EngineConfig) -> Result<(), EngineError> {
    match raw {
        Some(id) if chars(id) > cfg.max_name_chars => {
            Err(EngineError::TooLarge("client_msg_id is too long".into()))
        }
        _ => Ok(()),
    }
}

/// From a frame that did not parse as a [`rendezvous_protocol::ClientFrame`]: its
/// `action` and `client_msg_id` when they are strings within the length limit, so
/// the `error` frame can name them. Neither is trusted beyond that.
pub fn unparsed_ids(text: &str, cfg: &EngineConfig) -> (Option<String>, Option<String>) {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) else {
        return (None, None);
    };
    let short = |key: &str| match map.get(key) {
        Some(Value::String(s)) if chars(s) <= cfg.max_name_chars && !s.is_empty() => {
            Some(s.clone())
        }
        _ => None,
    };
    (short("action"), short("client_msg_id"))
}

/// Signal payload: a JSON object of at most `max_signal_bytes` when serialized.
/// Returns its serialized size.
pub fn signal_payload(payload: &Value, cfg: &EngineConfig) -> Result<usize, EngineError> {
    if !payload.is_object() {
        return Err(EngineError::BadRequest("signal payload must be a JSON object".into()));
    }
    let size = serde_json::to_vec(payload).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > cfg.max_signal_bytes {
        return Err(EngineError::TooLarge(format!(
            "signal payload is over {} bytes",
            cfg.max_signal_bytes
        )));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> EngineConfig {
        EngineConfig::default()
    }

    #[test]
    fn interests_are_normalized() {
        let (c, wait) = search(
            &["Chess".into(), " go ".into(), "chess".into()],
            Some(" EN "),
            Some(""),
            None,
            Some(5_000),
            &cfg(),
        )
        .expect("valid");
        let names: Vec<&str> = c.interests.iter().map(|i| i.as_str()).collect();
        assert_eq!(names, ["chess", "go"]);
        assert_eq!(&*c.language, "en");
        assert_eq!(c.region, None);
        assert_eq!(c.group_size, 2);
        assert_eq!(wait, Duration::from_millis(5_000));
    }

    #[test]
    fn limits_are_enforced() {
        let c = cfg();
        let many: Vec<String> = (0..21).map(|i| format!("i{i}")).collect();
        assert!(matches!(search(&many, None, None, None, None, &c), Err(EngineError::TooLarge(_))));
        let long = vec!["x".repeat(33)];
        assert!(matches!(search(&long, None, None, None, None, &c), Err(EngineError::TooLarge(_))));
        assert!(matches!(
            search(&["".into()], None, None, None, None, &c),
            Err(EngineError::BadRequest(_))
        ));
        for g in [0u8, 1, 9, 200] {
            assert!(search(&[], None, None, Some(g), None, &c).is_err(), "group {g}");
        }
        assert_eq!(
            search(&[], None, None, None, Some(10_000_000), &c).expect("ok").1,
            c.search_timeout()
        );
        assert!(text(&"a".repeat(4_097), &c).is_err());
        assert!(text(&"é".repeat(4_096), &c).is_ok(), "counted in characters, not bytes");
        assert!(text("  ", &c).is_err());
        assert!(public_room("pub:lobby", &c).is_ok());
        assert!(public_room("pub:", &c).is_err());
        assert!(public_room("r123", &c).is_err());
        assert!(signal_payload(&serde_json::json!("sdp"), &c).is_err());
        let big = serde_json::json!({ "sdp": "x".repeat(17_000) });
        assert!(matches!(signal_payload(&big, &c), Err(EngineError::TooLarge(_))));
        assert!(signal_payload(&serde_json::json!({"type": "offer"}), &c).is_ok());
    }

    #[test]
    fn ids_of_an_unparsed_frame_are_echoed_only_when_short_strings() {
        let c = cfg();
        let (a, id) = unparsed_ids(r#"{"action":"send","room_id":"r","client_msg_id":"c1"}"#, &c);
        assert_eq!((a.as_deref(), id.as_deref()), (Some("send"), Some("c1")));
        let long = format!(r#"{{"action":"send","client_msg_id":"{}"}}"#, "x".repeat(65));
        assert_eq!(unparsed_ids(&long, &c).1, None);
        assert_eq!(unparsed_ids(r#"{"client_msg_id":7}"#, &c), (None, None));
        assert_eq!(unparsed_ids("not json", &c), (None, None));
        assert_eq!(unparsed_ids(r#"["client_msg_id"]"#, &c), (None, None));
    }

    #[test]
    fn languages_are_tags_from_the_allow_list() {
        let c = cfg();
        assert_eq!(language("pt-BR", &c).expect("tag"), "pt-br");
        assert_eq!(language("  ", &c).expect("blank"), "en", "blank is the default");
        for bad in ["english", "e", "en_US", "123", "en-", "x-toolongsubtag"] {
            assert!(matches!(language(bad, &c), Err(EngineError::BadRequest(_))), "{bad}");
        }
        assert!(matches!(language(&"l".repeat(65), &c), Err(EngineError::TooLarge(_))));
        let c = EngineConfig { languages: vec!["en".into(), "FR".into()], ..cfg() };
        assert_eq!(language("fr", &c).expect("allowed"), "fr");
        let Err(EngineError::BadRequest(msg)) = language("de", &c) else { panic!("refused") };
        assert!(msg.contains("en, FR"), "names the allowed ones: {msg}");
        let (crit, _) = search(&[], None, None, None, None, &c).expect("default");
        assert_eq!(&*crit.language, "en");
    }

    #[test]
    fn a_split_languages_searches_start_in_their_users_part() {
        let c = EngineConfig {
            language_parts: vec![crate::config::LanguageParts { language: "EN".into(), parts: 4 }],
            ..cfg()
        };
        let (given, _) = search(&[], Some("en"), None, None, None, &c).expect("en");
        let (none, _) = search(&[], None, None, None, None, &c).expect("no language");
        let (fr, _) = search(&[], Some("fr"), None, None, None, &c).expect("fr");
        assert_eq!((given.roam, none.roam, fr.roam), (Roam::Stays, Roam::AnyLanguage, Roam::Stays));
        let placed = place(given, "alice", &c);
        assert_eq!(&*placed.language, crate::language::home_pool("en", "alice", 4));
        assert_eq!(placed.roam, Roam::Parts);
        assert_eq!(place(placed.clone(), "alice", &c), placed, "placing twice changes nothing");
        let placed = place(none, "alice", &c);
        assert_eq!(crate::language::family(&placed.language), "en");
        assert_eq!(
            placed.roam,
            Roam::AnyLanguage,
            "a search without a language still roams anywhere"
        );
        assert_eq!(place(fr.clone(), "alice", &c), fr, "fr is not split");
    }
}
