//! Plain-text tables for the listing commands: a header line, then a line
//! per row, each column as wide as its widest cell, two spaces apart.
//!
//! Widths are counted in terminal columns, not characters: a chat named in
//! Japanese, or with an emoji, takes two columns per such character, and
//! counting characters shifted every column after it.

use unicode_width::UnicodeWidthStr;

/// Where a column's cells sit in its width.
#[derive(Clone, Copy)]
pub(super) enum Align {
    Left,
    /// For numbers, so that their digits line up.
    Right,
}

/// The table of `rows` under the titles of `columns`. A last column set
/// left is not padded, so that no line ends in spaces.
pub(super) fn render(columns: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (title, _))| {
            rows.iter()
                .filter_map(|row| row.get(i))
                .map(|cell| cell.width())
                .chain([title.width()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let titles: Vec<String> = columns.iter().map(|(title, _)| title.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&titles).chain(rows) {
        let mut line = String::new();
        for (i, ((_, align), width)) in columns.iter().zip(&widths).enumerate() {
            let cell = row.get(i).map_or("", String::as_str);
            let pad = " ".repeat(width.saturating_sub(cell.width()));
            if i > 0 {
                line.push_str("  ");
            }
            match align {
                Align::Left => line.push_str(&format!("{cell}{pad}")),
                Align::Right => line.push_str(&format!("{pad}{cell}")),
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let rows = vec![
            vec!["alice".to_owned(), "12".to_owned(), "é".to_owned()],
            vec!["b".to_owned(), "3".to_owned(), "longer".to_owned()],
        ];
        let table = render(
            &[
                ("id", Align::Left),
                ("chats", Align::Right),
                ("note", Align::Left),
            ],
            &rows,
        );
        assert_eq!(
            table,
            "id     chats  note\n\
             alice     12  é\n\
             b          3  longer\n"
        );
        assert_eq!(render(&[("id", Align::Left)], &[]), "id\n");
    }

    #[test]
    fn wide_characters_take_two_columns() {
        let rows = vec![
            vec!["日本語".to_owned(), "1".to_owned()],
            vec!["trip 🚀".to_owned(), "2".to_owned()],
            vec!["plain".to_owned(), "3".to_owned()],
        ];
        let table = render(&[("name", Align::Left), ("n", Align::Right)], &rows);
        assert_eq!(
            table,
            "name     n\n\
             日本語   1\n\
             trip 🚀  2\n\
             plain    3\n"
        );
    }
}
