//! A Dockerfile reader for the checks in tests/deploy.rs: instructions with their
//! continuation lines joined and comments dropped, the forms of COPY, ENV,
//! HEALTHCHECK and ENTRYPOINT this project uses, and `.dockerignore` matching.

/// One instruction: `keyword` upper-cased, `args` the rest on one line.
#[derive(Debug, Clone)]
pub struct Instruction {
    pub keyword: String,
    pub args: String,
    /// 1-based line where the instruction starts.
    pub line: usize,
}

/// Every instruction, in order. Parser directives (`# syntax=…`) and comments are
/// dropped, also inside continuations, as Docker does.
pub fn parse(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_none()) {
            continue;
        }
        let (body, continues) = match line.strip_suffix('\\') {
            Some(b) => (b.trim_end(), true),
            None => (line, false),
        };
        let entry = current.get_or_insert_with(|| (n + 1, String::new()));
        if !entry.1.is_empty() && !body.is_empty() {
            entry.1.push(' ');
        }
        entry.1.push_str(body);
        if !continues {
            let (start, full) = current.take().expect("an instruction in progress");
            if full.is_empty() {
                continue;
            }
            let (kw, args) = full.split_once(char::is_whitespace).unwrap_or((&full, ""));
            out.push(Instruction {
                keyword: kw.to_ascii_uppercase(),
                args: args.trim().to_owned(),
                line: start,
            });
        }
    }
    if let Some((start, full)) = current {
        let (kw, args) = full.split_once(char::is_whitespace).unwrap_or((&full, ""));
        out.push(Instruction {
            keyword: kw.to_ascii_uppercase(),
            args: args.trim().to_owned(),
            line: start,
        });
    }
    out
}

/// The stages: each starts at a FROM (its instructions include the FROM).
pub fn stages(instructions: &[Instruction]) -> Vec<Vec<Instruction>> {
    let mut out: Vec<Vec<Instruction>> = Vec::new();
    for i in instructions {
        if i.keyword == "FROM" {
            out.push(Vec::new());
        }
        if let Some(stage) = out.last_mut() {
            stage.push(i.clone());
        }
    }
    out
}

/// A COPY (or ADD): its `--flag=value` options, sources and destination.
#[derive(Debug, Clone)]
pub struct Copy {
    pub flags: Vec<(String, String)>,
    pub sources: Vec<String>,
    pub dest: String,
}

impl Copy {
    pub fn flag(&self, name: &str) -> Option<&str> {
        self.flags.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Split the leading `--name=value` options off `args`.
fn options(args: &str) -> (Vec<(String, String)>, &str) {
    let mut flags = Vec::new();
    let mut rest = args.trim_start();
    while let Some(opt) = rest.strip_prefix("--") {
        let end = opt.find(char::is_whitespace).unwrap_or(opt.len());
        let (k, v) = opt[..end].split_once('=').unwrap_or((&opt[..end], ""));
        flags.push((k.to_owned(), v.to_owned()));
        rest = opt[end..].trim_start();
    }
    (flags, rest)
}

/// Words of a shell-form or JSON-form argument list.
fn words(rest: &str) -> Result<Vec<String>, String> {
    if rest.starts_with('[') {
        serde_json::from_str(rest).map_err(|e| format!("bad JSON form {rest:?}: {e}"))
    } else {
        Ok(rest.split_whitespace().map(str::to_owned).collect())
    }
}

pub fn copy(i: &Instruction) -> Result<Copy, String> {
    let (flags, rest) = options(&i.args);
    let mut w = words(rest)?;
    if w.len() < 2 {
        return Err(format!("line {}: {} needs a source and a destination", i.line, i.keyword));
    }
    let dest = w.pop().expect("two words");
    Ok(Copy { flags, sources: w, dest })
}

/// `ENV K=V K2=V2` or `ENV K V`; values may be double-quoted.
pub fn env(i: &Instruction) -> Result<Vec<(String, String)>, String> {
    let first = i.args.split_whitespace().next().unwrap_or_default();
    if !first.contains('=') {
        let (k, v) =
            i.args.split_once(char::is_whitespace).ok_or(format!("line {}: bad ENV", i.line))?;
        return Ok(vec![(k.to_owned(), v.trim().to_owned())]);
    }
    i.args
        .split_whitespace()
        .map(|kv| {
            let (k, v) =
                kv.split_once('=').ok_or(format!("line {}: bad ENV pair {kv:?}", i.line))?;
            Ok((k.to_owned(), v.trim_matches('"').to_owned()))
        })
        .collect()
}

/// A HEALTHCHECK's command (shell form: run with `/bin/sh -c`); its options
/// (`--interval=…`) are skipped.
#[derive(Debug, Clone)]
pub struct Healthcheck {
    /// The argv Docker runs: `["/bin/sh", "-c", CMD]` for the shell form.
    pub argv: Vec<String>,
}

pub fn healthcheck(i: &Instruction) -> Result<Healthcheck, String> {
    let (_, rest) = options(&i.args);
    let cmd = rest
        .strip_prefix("CMD")
        .ok_or(format!("line {}: HEALTHCHECK without CMD (NONE?)", i.line))?
        .trim();
    let argv = if cmd.starts_with('[') {
        words(cmd)?
    } else {
        vec!["/bin/sh".to_owned(), "-c".to_owned(), cmd.to_owned()]
    };
    Ok(Healthcheck { argv })
}

/// ENTRYPOINT / CMD words (JSON or shell form).
pub fn exec_form(i: &Instruction) -> Result<Vec<String>, String> {
    words(&i.args)
}

/// `.dockerignore`: is `path` (relative to the context, `/`-separated) excluded?
/// Patterns are matched against the path and each of its parent directories;
/// the last matching pattern wins, `!` re-includes. Supports `*`, `?` and `**`.
pub fn ignored(dockerignore: &str, path: &str) -> bool {
    let path = path.trim_start_matches("./").trim_end_matches('/');
    let parts: Vec<&str> = path.split('/').collect();
    let mut excluded = false;
    for raw in dockerignore.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (negate, pat) = match line.strip_prefix('!') {
            Some(p) => (true, p.trim()),
            None => (false, line),
        };
        let pat = pat.trim_start_matches('/').trim_end_matches('/');
        let pat_parts: Vec<&str> = pat.split('/').collect();
        // A match of the path or of any parent directory.
        let hit = (1..=parts.len()).any(|n| glob_parts(&pat_parts, &parts[..n]));
        if hit {
            excluded = !negate;
        }
    }
    excluded
}

fn glob_parts(pat: &[&str], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|k| glob_parts(rest, &path[k..])),
        Some((p, rest)) => match path.split_first() {
            Some((first, tail)) => glob(p.as_bytes(), first.as_bytes()) && glob_parts(rest, tail),
            None => false,
        },
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|k| glob(rest, &s[k..])),
        Some((b'?', rest)) => !s.is_empty() && glob(rest, &s[1..]),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_instructions_and_ignore_files() {
        let text = "# syntax=docker/dockerfile:1\nFROM a AS b\nRUN x \\\n # note\n && y\nCOPY --from=b /p/q /r/ /s/\nENV A=1 B=\"2\"\nHEALTHCHECK --interval=5s CMD curl -f http://x/ || exit 1\nENTRYPOINT [\"e\"]\n";
        let i = parse(text);
        let kws: Vec<&str> = i.iter().map(|i| i.keyword.as_str()).collect();
        assert_eq!(kws, ["FROM", "RUN", "COPY", "ENV", "HEALTHCHECK", "ENTRYPOINT"]);
        assert_eq!(i[1].args, "x && y");
        let c = copy(&i[2]).expect("copy");
        assert_eq!((c.flag("from"), c.sources.len(), c.dest.as_str()), (Some("b"), 2, "/s/"));
        assert_eq!(env(&i[3]).expect("env")[1], ("B".to_owned(), "2".to_owned()));
        assert_eq!(healthcheck(&i[4]).expect("hc").argv[2], "curl -f http://x/ || exit 1");
        assert_eq!(exec_form(&i[5]).expect("entrypoint"), ["e"]);
        let ignore = "*\n!src/\n!Cargo.toml\n**/target/\n";
        assert!(!ignored(ignore, "src/main.rs") && !ignored(ignore, "Cargo.toml"));
        assert!(ignored(ignore, "tests/x.rs") && ignored(ignore, "src/target/x"));
    }
}
