//! Just enough PromQL for the dashboard checks: the metric names an expression
//! uses, Grafana's template variables in it, and bracket balance. Prometheus itself
//! judges validity (tests/deploy.rs sends every expression to a real one).

use std::collections::BTreeSet;

/// The prefixes of the names this project exports: the engine's and the load
/// tester's (`rendezvous_…`) and metrics-process' (`process_…`).
const PREFIXES: [&str; 2] = ["rendezvous_", "process_"];

/// Series suffixes of a histogram (or summary) that name no metric of their own.
pub const SERIES_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

/// Identifiers outside string literals, in order of appearance.
pub fn identifiers(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            // Skip the literal (backslash escapes inside "…" and '…').
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && c != '`' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            // `$__rate_interval`, `$instance`: template variables, not names.
            if start == 0 || chars[start - 1] != '$' {
                out.push(chars[start..i].iter().collect());
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Every series name of ours the expression selects, exactly as written
/// (`rendezvous_match_latency_seconds_bucket` stays `…_bucket`).
pub fn series_names(expr: &str) -> BTreeSet<String> {
    identifiers(expr).into_iter().filter(|id| PREFIXES.iter().any(|p| id.starts_with(p))).collect()
}

/// Every selector of ours (and of Prometheus' `up`) in `expr`: the name and the
/// text between its braces (empty when it has none), e.g.
/// `("up", "job=\"$job\", instance=~\"$instance\"")`.
pub fn selectors(expr: &str) -> Vec<(String, String)> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && c != '`' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            continue;
        }
        let starts_name = (c.is_ascii_alphabetic() || c == '_' || c == ':')
            && (i == 0 || !(chars[i - 1].is_ascii_alphanumeric() || "_:$".contains(chars[i - 1])));
        if !starts_name {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len()
            && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
        {
            i += 1;
        }
        let name: String = chars[start..i].iter().collect();
        let braces = chars.get(i) == Some(&'{');
        let ours = PREFIXES.iter().any(|p| name.starts_with(p));
        if !(ours || (name == "up" && braces)) {
            continue;
        }
        let mut inner = String::new();
        if braces {
            // Matchers end at the first `}` outside a quoted value.
            let mut j = i + 1;
            let mut quote = None;
            while j < chars.len() {
                let d = chars[j];
                match quote {
                    Some(_) if d == '\\' => {
                        inner.push(d);
                        j += 1;
                        if let Some(e) = chars.get(j) {
                            inner.push(*e);
                        }
                    }
                    Some(q) if d == q => {
                        quote = None;
                        inner.push(d);
                    }
                    Some(_) => inner.push(d),
                    None if d == '"' || d == '\'' => {
                        quote = Some(d);
                        inner.push(d);
                    }
                    None if d == '}' => break,
                    None => inner.push(d),
                }
                j += 1;
            }
            i = j + 1;
        }
        out.push((name, inner.trim().to_owned()));
    }
    out
}

/// Does a selector's matcher text select its job through a template variable
/// (`job="$job"`, `job=~"${engine_job}"`)?
pub fn job_by_variable(matchers: &str) -> bool {
    matchers.split(',').map(str::trim).any(|m| {
        m.strip_prefix("job")
            .map(|r| r.trim_start().trim_start_matches(['=', '~']).trim())
            .is_some_and(|v| v.starts_with("\"$"))
    })
}

/// The metric a series belongs to: `_bucket`, `_sum` and `_count` stripped.
pub fn base_name(series: &str) -> &str {
    for s in SERIES_SUFFIXES {
        if let Some(base) = series.strip_suffix(s) {
            return base;
        }
    }
    series
}

/// Template variables (`$name`, `${name}`, `[[name]]` is not used here) in `expr`.
pub fn variables(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            let braced = b.get(i + 1) == Some(&b'{');
            let start = if braced { i + 2 } else { i + 1 };
            let mut j = start;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                j += 1;
            }
            out.insert(expr[start..j].to_owned());
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

/// `expr` with every template variable replaced by the value in `values`
/// (`$name` and `${name}`); Err names a variable that has no value.
pub fn substitute(expr: &str, values: &[(String, String)]) -> Result<String, String> {
    let mut out = expr.to_owned();
    // Longest names first, so `$__range` never eats the start of `$__range_s`.
    let mut sorted: Vec<&(String, String)> = values.iter().collect();
    sorted.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    for (name, value) in sorted {
        out = out.replace(&format!("${{{name}}}"), value).replace(&format!("${name}"), value);
    }
    match variables(&out).into_iter().next() {
        Some(left) => Err(format!("no value for ${left}")),
        None => Ok(out),
    }
}

/// Brackets and quotes balance (a cheap first check; Prometheus has the last word).
pub fn balanced(expr: &str) -> Result<(), String> {
    let mut stack = Vec::new();
    let mut chars = expr.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => loop {
                match chars.next() {
                    None => return Err(format!("unterminated {c}…{c}")),
                    Some('\\') if c != '`' => {
                        chars.next();
                    }
                    Some(d) if d == c => break,
                    Some(_) => {}
                }
            },
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let want = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if stack.pop() != Some(want) {
                    return Err(format!("unbalanced {c}"));
                }
            }
            _ => {}
        }
    }
    match stack.pop() {
        Some(c) => Err(format!("unclosed {c}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_variables_and_literals() {
        let e = r#"histogram_quantile(0.99, sum by (le) (rate(rendezvous_match_latency_seconds_bucket{instance=~"$instance", x="rendezvous_not_a_name"}[$__rate_interval]))) / process_open_fds"#;
        let names: Vec<String> = series_names(e).into_iter().collect();
        assert_eq!(names, ["process_open_fds", "rendezvous_match_latency_seconds_bucket"]);
        assert_eq!(
            base_name("rendezvous_match_latency_seconds_bucket"),
            "rendezvous_match_latency_seconds"
        );
        let vars: Vec<String> = variables(e).into_iter().collect();
        assert_eq!(vars, ["__rate_interval", "instance"]);
        let values =
            vec![("instance".into(), ".+".into()), ("__rate_interval".into(), "1m".into())];
        let s = substitute(e, &values).expect("substituted");
        assert!(s.contains(r#"instance=~".+""#) && s.contains("[1m]"), "{s}");
        assert!(balanced(e).is_ok());
        assert!(balanced("sum(rate(x[1m])").is_err());
    }

    #[test]
    fn selectors_and_their_job() {
        let e = r#"sum(up{job="$job", instance=~"a}b"}) / rendezvous_x_total + rate(process_open_fds{job=~"${engine_job}"}[5m]) + up"#;
        let s = selectors(e);
        assert_eq!(
            s,
            [
                ("up".to_owned(), r#"job="$job", instance=~"a}b""#.to_owned()),
                ("rendezvous_x_total".to_owned(), String::new()),
                ("process_open_fds".to_owned(), r#"job=~"${engine_job}""#.to_owned()),
            ]
        );
        assert!(job_by_variable(&s[0].1));
        assert!(!job_by_variable(&s[1].1));
        assert!(job_by_variable(&s[2].1));
        assert!(!job_by_variable(r#"job="rendezvous""#));
    }
}
