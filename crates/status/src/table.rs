//! Aligned text tables fitted to a width, coloured only when asked (a terminal).

/// How a cell is emphasised on a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tone {
    /// Plain.
    #[default]
    Plain,
    /// Good news (allowed, healthy, STRICT).
    Good,
    /// Needs a look (warnings, dry-run, expiring soon).
    Warn,
    /// Bad news (denied, unhealthy, expired).
    Bad,
    /// Unimportant (absent values).
    Dim,
}

impl Tone {
    fn ansi(self) -> Option<&'static str> {
        match self {
            Tone::Plain => None,
            Tone::Good => Some("\x1b[32m"),
            Tone::Warn => Some("\x1b[33m"),
            Tone::Bad => Some("\x1b[31m"),
            Tone::Dim => Some("\x1b[2m"),
        }
    }
}

/// One cell: text and tone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cell {
    /// What it says (one line).
    pub text: String,
    /// How it is emphasised.
    pub tone: Tone,
}

impl Cell {
    /// A cell with a tone; control characters in `text` are shown escaped ([`escape`]).
    pub fn toned(text: impl Into<String>, tone: Tone) -> Cell {
        Cell {
            text: escape(&text.into()),
            tone,
        }
    }
}

/// `text` safe to print on a terminal, on one line: control characters (ESC, CR, newline,
/// tab, DEL, the C1 set) and the invisible bidirectional overrides are written as escapes
/// (`\x1b`, `\n`, `\u{202e}`), so a workload label or a policy name from a YAML file can
/// neither move the cursor, clear the screen, recolour the table, nor reorder what is shown.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() || is_bidi_control(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// The Unicode bidirectional formatting characters (the "Trojan Source" set, CVE-2021-42574).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

impl<T: Into<String>> From<T> for Cell {
    fn from(text: T) -> Cell {
        let text: String = text.into();
        if text.is_empty() || text == "-" {
            Cell::toned("-", Tone::Dim)
        } else {
            Cell::toned(text, Tone::Plain)
        }
    }
}

/// A table: a header and rows of cells.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<Cell>>,
}

/// Columns are never squeezed below this many characters (`abc…`).
const MIN_COLUMN: usize = 4;
/// Spaces between columns.
const GAP: usize = 2;

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are blank, extra ones dropped).
    pub fn row(&mut self, cells: Vec<Cell>) {
        let mut cells = cells;
        cells.resize(self.headers.len(), Cell::default());
        self.rows.push(cells);
    }

    /// How many rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True without rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The widths of the columns fitted into `width` characters: the widest column gives up a
    /// character until the line fits (or every column is at its minimum).
    fn widths(&self, width: Option<usize>) -> Vec<usize> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.text.chars().count());
            }
        }
        let Some(width) = width else { return widths };
        let gaps = GAP * widths.len().saturating_sub(1);
        while widths.iter().sum::<usize>() + gaps > width {
            let Some(widest) = widths
                .iter_mut()
                .filter(|w| **w > MIN_COLUMN)
                .max_by_key(|w| **w)
            else {
                break;
            };
            *widest -= 1;
        }
        widths
    }

    /// The table as lines of text; `width` fits it to a terminal, `color` adds ANSI colours.
    pub fn render(&self, width: Option<usize>, color: bool) -> String {
        let widths = self.widths(width);
        let mut out = String::new();
        let header: Vec<Cell> = self
            .headers
            .iter()
            .map(|h| Cell::toned(h.to_uppercase(), Tone::Plain))
            .collect();
        line(&mut out, &header, &widths, color, true);
        for row in &self.rows {
            line(&mut out, row, &widths, color, false);
        }
        out
    }
}

fn line(out: &mut String, cells: &[Cell], widths: &[usize], color: bool, bold: bool) {
    let start = out.len();
    let last = cells.len().saturating_sub(1);
    for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
        let text = fit(&cell.text, *width);
        // The last column is not padded: no trailing blanks.
        let pad = if i == last {
            0
        } else {
            width - text.chars().count() + GAP
        };
        let style = if bold {
            Some("\x1b[1m")
        } else {
            cell.tone.ansi()
        };
        match style.filter(|_| color) {
            Some(code) => out.push_str(&format!("{code}{text}\x1b[0m")),
            None => out.push_str(&text),
        }
        out.push_str(&" ".repeat(pad));
    }
    // Empty trailing cells leave blanks behind.
    let end = start + out[start..].trim_end_matches(' ').len();
    out.truncate(end);
    out.push('\n');
}

/// `text` cut to `width` characters, the cut marked with `…`.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        let mut t = Table::new(&["name", "address", "labels"]);
        t.row(vec![
            "shop/web".into(),
            "127.0.0.1".into(),
            "app=web".into(),
        ]);
        t.row(vec![
            "shop/database".into(),
            "10.0.0.2".into(),
            Cell::toned("app=db,version=v2", Tone::Warn),
        ]);
        t
    }

    #[test]
    fn columns_are_aligned_without_trailing_blanks() {
        assert_eq!(
            table().render(None, false),
            "NAME           ADDRESS    LABELS\n\
             shop/web       127.0.0.1  app=web\n\
             shop/database  10.0.0.2   app=db,version=v2\n"
        );
    }

    #[test]
    fn a_narrow_terminal_cuts_the_widest_column_first() {
        let text = table().render(Some(38), false);
        for line in text.lines() {
            assert!(line.chars().count() <= 38, "{line:?}");
        }
        assert!(text.contains("app=db,vers…"), "{text}");
        // The narrower columns are untouched.
        assert!(text.contains("shop/database  10.0.0.2"), "{text}");
    }

    #[test]
    fn colour_only_when_asked() {
        assert!(!table().render(None, false).contains('\x1b'));
        let coloured = table().render(None, true);
        assert!(
            coloured.contains("\x1b[33mapp=db,version=v2\x1b[0m"),
            "{coloured}"
        );
        assert!(coloured.starts_with("\x1b[1mNAME"), "{coloured}");
    }

    #[test]
    fn control_characters_print_escaped() {
        // A label value that would clear the screen, move the cursor home and turn the text
        // red, a carriage return that would overwrite the line, a bell, a C1 CSI and an
        // RTL override.
        let mut t = Table::new(&["labels"]);
        t.row(vec![
            "app=\x1b[2J\x1b[H\x1b[31mevil\rok\x07\u{9b}31m\u{202e}cba\nnext\ttab\x7f".into(),
        ]);
        let text = t.render(None, true);
        assert_eq!(
            text,
            "\x1b[1mLABELS\x1b[0m\n\
             app=\\x1b[2J\\x1b[H\\x1b[31mevil\\rok\\x07\\u{9b}31m\\u{202e}cba\\nnext\\ttab\\x7f\n"
        );
        // Only the table's own colour codes reach the terminal.
        assert_eq!(text.matches('\x1b').count(), 2, "{text:?}");
    }

    #[test]
    fn absent_values_show_as_a_dash() {
        let mut t = Table::new(&["a", "b"]);
        t.row(vec!["x".into(), "".into()]);
        assert_eq!(t.render(None, false), "A  B\nx  -\n");
    }
}
