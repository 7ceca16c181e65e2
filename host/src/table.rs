//! Aligned text tables for the CLI: columns padded to their widest cell,
//! two spaces apart, no trailing blanks.

/// Renders `rows` (the first is usually the header), one line each.
pub fn render<R: AsRef<[String]>>(rows: &[R]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.as_ref().iter().enumerate() {
            let width = cell.chars().count();
            match widths.get_mut(i) {
                Some(w) => *w = (*w).max(width),
                None => widths.push(width),
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> =
            row.as_ref().iter().zip(&widths).map(|(cell, &width)| format!("{cell:<width$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let rows = [
            vec!["METER".to_owned(), "TOTAL".to_owned()],
            vec!["sandbox_cpu_core_seconds".to_owned(), "1".to_owned()],
            vec!["ü".to_owned(), String::new()],
        ];
        assert_eq!(super::render(&rows), "METER                     TOTAL\nsandbox_cpu_core_seconds  1\nü\n");
    }
}
