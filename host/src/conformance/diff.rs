//! A line diff for people: what a fixture expected against what the plugin
//! produced, as ` `/`-`/`+` lines around each change (a longest common
//! subsequence of lines; the inputs are small pretty-printed JSON).

/// Unchanged lines shown on each side of a change.
const CONTEXT: usize = 3;

/// Above this many LCS cells (lines × lines after the common ends are
/// trimmed), the middle is shown as all removed, then all added, rather
/// than spending quadratic time and memory on a huge fixture.
const MAX_CELLS: usize = 4_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op<'a> {
    Same(&'a str),
    Removed(&'a str),
    Added(&'a str),
}

/// `-` lines are `expected`'s, `+` lines `actual`'s; runs of more than
/// [`CONTEXT`] unchanged lines away from a change are elided as `  ...`.
/// Empty when the texts are equal.
pub fn unified(expected: &str, actual: &str) -> String {
    let ops = ops(&expected.lines().collect::<Vec<_>>(), &actual.lines().collect::<Vec<_>>());
    let changed: Vec<usize> =
        ops.iter().enumerate().filter(|(_, op)| !matches!(op, Op::Same(_))).map(|(i, _)| i).collect();
    if changed.is_empty() {
        return String::new();
    }
    let near_change = |i: usize| changed.iter().any(|&c| c.abs_diff(i) <= CONTEXT);
    let mut out = String::new();
    let mut elided = false;
    for (i, op) in ops.iter().enumerate() {
        let (mark, line) = match op {
            Op::Same(_) if !near_change(i) => {
                if !elided {
                    out.push_str("  ...\n");
                    elided = true;
                }
                continue;
            }
            Op::Same(line) => (' ', line),
            Op::Removed(line) => ('-', line),
            Op::Added(line) => ('+', line),
        };
        elided = false;
        out.push(mark);
        out.push(' ');
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The edit script from `a` to `b`.
fn ops<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<Op<'a>> {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..].iter().rev().zip(b[prefix..].iter().rev()).take_while(|(x, y)| x == y).count();
    let (a_mid, b_mid) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let mut out: Vec<Op> = a[..prefix].iter().map(|l| Op::Same(l)).collect();
    if a_mid.len().saturating_mul(b_mid.len()) > MAX_CELLS {
        out.extend(a_mid.iter().map(|l| Op::Removed(l)));
        out.extend(b_mid.iter().map(|l| Op::Added(l)));
    } else {
        out.extend(lcs_ops(a_mid, b_mid));
    }
    out.extend(a[a.len() - suffix..].iter().map(|l| Op::Same(l)));
    out
}

/// The classic table: `len[i][j]` is the LCS length of `a[i..]` and
/// `b[j..]`; walking it from the top left gives removals before additions.
fn lcs_ops<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<Op<'a>> {
    let width = b.len() + 1;
    let mut len = vec![0usize; (a.len() + 1) * width];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            len[i * width + j] = if a[i] == b[j] {
                len[(i + 1) * width + j + 1] + 1
            } else {
                len[(i + 1) * width + j].max(len[i * width + j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(a.len() + b.len());
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            out.push(Op::Same(a[i]));
            (i, j) = (i + 1, j + 1);
        } else if len[(i + 1) * width + j] >= len[i * width + j + 1] {
            out.push(Op::Removed(a[i]));
            i += 1;
        } else {
            out.push(Op::Added(b[j]));
            j += 1;
        }
    }
    out.extend(a[i..].iter().map(|l| Op::Removed(l)));
    out.extend(b[j..].iter().map(|l| Op::Added(l)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_have_no_diff() {
        assert_eq!(unified("a\nb\n", "a\nb\n"), "");
    }

    #[test]
    fn a_changed_line_is_removed_then_added_with_context() {
        let expected = "1\n2\n3\n4\n5\nold\n6\n7\n8\n9\n10\n";
        let actual = "1\n2\n3\n4\n5\nnew\n6\n7\n8\n9\n10\n";
        assert_eq!(unified(expected, actual), "  ...\n  3\n  4\n  5\n- old\n+ new\n  6\n  7\n  8\n  ...\n");
    }

    #[test]
    fn insertions_and_deletions_keep_the_common_lines() {
        assert_eq!(unified("a\nb\nc\n", "a\nc\nd\n"), "  a\n- b\n  c\n+ d\n");
        assert_eq!(unified("", "x\n"), "+ x\n");
        assert_eq!(unified("x\ny\n", ""), "- x\n- y\n");
        // The longest common subsequence, not the first match.
        assert_eq!(unified("x\na\nb\n", "a\nb\nx\n"), "- x\n  a\n  b\n+ x\n");
    }

    #[test]
    fn huge_middles_fall_back_to_remove_then_add() {
        let a: Vec<String> = (0..3000).map(|i| format!("a{i}")).collect();
        let b: Vec<String> = (0..3000).map(|i| format!("b{i}")).collect();
        let diff = unified(&a.join("\n"), &b.join("\n"));
        assert_eq!(diff.lines().count(), 6000);
        assert!(diff.starts_with("- a0\n") && diff.ends_with("+ b2999\n"));
    }
}
