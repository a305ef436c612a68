//! Name globs as used in routes and key allow-lists: `*` matches any run of characters,
//! everything else matches itself.

/// Whether `text` matches `pattern`.
pub fn matches(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Position after the last `*` seen, and the text position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi + 1, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Whether a pattern has any wildcard.
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains('*')
}

/// How specific a glob is: its count of literal characters.
pub fn specificity(pattern: &str) -> usize {
    pattern.bytes().filter(|&c| c != b'*').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(matches("gpt-4o", "gpt-4o"));
        assert!(!matches("gpt-4o", "gpt-4o-mini"));
        assert!(matches("gpt-4o*", "gpt-4o-mini"));
        assert!(matches("*", ""));
        assert!(matches("*mini", "gpt-4o-mini"));
        assert!(matches("g*4*i", "gpt-4o-mini"));
        assert!(!matches("g*5*i", "gpt-4o-mini"));
        assert!(matches("a*b*c", "aXbYbZc"));
        assert!(!matches("a*b*c", "aXbYbZ"));
        assert!(matches("**", "x"));
        assert_eq!(specificity("gpt-4o*"), 6);
    }
}
