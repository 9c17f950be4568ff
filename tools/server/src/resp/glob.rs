//! Redis's glob patterns (`*`, `?`, `[...]`, `\\` escapes) for SCAN, KEYS and HSCAN MATCH.

/// Does `key` match the glob `pattern` (`*`, `?`, `[...]`, `\` escapes)?
pub fn glob_match(pattern: &[u8], key: &[u8]) -> bool {
    let (mut p, mut k) = (0, 0);
    let (mut star_p, mut star_k) = (None, 0);
    while k < key.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star_p = Some(p);
                star_k = k;
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => class_match(pattern, p, key[k]),
            Some(b'\\') if p + 1 < pattern.len() => (pattern[p + 1] == key[k]).then_some(p + 2),
            Some(c) => (*c == key[k]).then_some(p + 1),
            None => None,
        };
        match step {
            Some(next) => {
                p = next;
                k += 1;
            }
            None => match star_p {
                Some(sp) => {
                    p = sp + 1;
                    star_k += 1;
                    k = star_k;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

/// Matches `c` against the class starting at `pattern[p] == b'['`; the index after it.
fn class_match(pattern: &[u8], p: usize, c: u8) -> Option<usize> {
    let mut i = p + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    while i < pattern.len() && pattern[i] != b']' {
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            matched |= pattern[i + 1] == c;
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (lo, hi) = (pattern[i].min(pattern[i + 2]), pattern[i].max(pattern[i + 2]));
            matched |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            matched |= pattern[i] == c;
            i += 1;
        }
    }
    if i >= pattern.len() {
        return None; // unterminated class: no match
    }
    (matched != negate).then_some(i + 1)
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs_match_like_redis() {
        for (p, k, want) in [
            ("*", "anything", true),
            ("user:*", "user:42", true),
            ("user:*", "order:1", false),
            ("h?llo", "hello", true),
            ("h[ae]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-c]llo", "hbllo", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            ("*:*:end", "x:y:end", true),
            ("", "", true),
            ("[abc", "a", false),
        ] {
            assert_eq!(glob_match(p.as_bytes(), k.as_bytes()), want, "{p} vs {k}");
        }
    }
}
