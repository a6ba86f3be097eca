//! `-w table`: olekukonko/tablewriter's boxes, as etcdctl draws them for members and endpoints
//! (cells right-aligned, headers upper-cased and centred): ASCII in etcdctl 3.4, box-drawing
//! characters in 3.7's (tablewriter 1.x).

use oxcd_proto::etcdserverpb::MemberListResponse;

use super::rows::{self, Rows};
use super::{DataHashKv, EndpointHash, EndpointHealth, EndpointStatus, Layout, Printer};
use crate::failure::CtlResult;

pub struct TablePrinter;

/// The characters a table is drawn with: corners and junctions of the top, header-separator and
/// bottom lines (left, middle, right), the horizontal and the vertical line.
struct Borders {
    top: [char; 3],
    middle: [char; 3],
    bottom: [char; 3],
    horizontal: char,
    vertical: char,
}

const ASCII: Borders = Borders {
    top: ['+'; 3],
    middle: ['+'; 3],
    bottom: ['+'; 3],
    horizontal: '-',
    vertical: '|',
};

const BOX_DRAWING: Borders = Borders {
    top: ['┌', '┬', '┐'],
    middle: ['├', '┼', '┤'],
    bottom: ['└', '┴', '┘'],
    horizontal: '─',
    vertical: '│',
};

fn borders(layout: Layout) -> &'static Borders {
    match layout {
        Layout::Etcdctl34 => &ASCII,
        Layout::Etcdctl37 => &BOX_DRAWING,
    }
}

fn render(table: &Rows, borders: &Borders) -> String {
    // tablewriter titles headers: upper case, underscores as spaces.
    let header: Vec<String> = table
        .header
        .iter()
        .map(|h| h.to_uppercase().replace('_', " "))
        .collect();
    let widths: Vec<usize> = header
        .iter()
        .enumerate()
        .map(|(i, h)| {
            table
                .rows
                .iter()
                .map(|row| row[i].chars().count())
                .chain([h.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let border = |[left, middle, right]: [char; 3]| {
        let segments: Vec<String> = widths
            .iter()
            .map(|w| borders.horizontal.to_string().repeat(w + 2))
            .collect();
        format!("{left}{}{right}\n", segments.join(&middle.to_string()))
    };
    let vertical = borders.vertical.to_string();
    let line = |cells: Vec<String>| format!("{vertical}{}{vertical}\n", cells.join(&vertical));
    let mut out = border(borders.top);
    out.push_str(&line(
        header
            .iter()
            .zip(&widths)
            .map(|(h, w)| {
                let pad = w - h.chars().count();
                let left = pad / 2;
                format!(" {}{h}{} ", " ".repeat(left), " ".repeat(pad - left))
            })
            .collect(),
    ));
    out.push_str(&border(borders.middle));
    for row in &table.rows {
        out.push_str(&line(
            row.iter()
                .zip(&widths)
                .map(|(cell, w)| format!(" {cell:>w$} "))
                .collect(),
        ));
    }
    out.push_str(&border(borders.bottom));
    out
}

impl Printer for TablePrinter {
    fn name(&self) -> &'static str {
        "table"
    }

    fn member_list(&self, r: &MemberListResponse) -> CtlResult {
        print!("{}", render(&rows::member_list(r), &ASCII));
        Ok(())
    }

    fn endpoint_health(&self, health: &[EndpointHealth]) -> CtlResult {
        print!("{}", render(&rows::endpoint_health(health), &ASCII));
        Ok(())
    }

    fn endpoint_status(&self, statuses: &[EndpointStatus], layout: Layout) -> CtlResult {
        let table = rows::endpoint_status(statuses, layout);
        print!("{}", render(&table, borders(layout)));
        Ok(())
    }

    fn endpoint_hash_kv(&self, hashes: &[EndpointHash], layout: Layout) -> CtlResult {
        let table = rows::endpoint_hash_kv(hashes, layout);
        print!("{}", render(&table, borders(layout)));
        Ok(())
    }

    fn data_hash_kv(&self, h: &DataHashKv) -> CtlResult {
        print!("{}", render(&rows::data_hash_kv(h), &BOX_DRAWING));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_like_tablewriter() {
        let table = Rows {
            header: vec!["endpoint", "hash"],
            rows: vec![vec!["127.0.0.1:42379".into(), "1114173141".into()]],
        };
        assert_eq!(
            render(&table, &ASCII),
            "+-----------------+------------+\n\
             |    ENDPOINT     |    HASH    |\n\
             +-----------------+------------+\n\
             | 127.0.0.1:42379 | 1114173141 |\n\
             +-----------------+------------+\n"
        );
    }

    #[test]
    fn draws_like_tablewriter_1() {
        let table = Rows {
            header: vec!["endpoint", "hash", "hash_revision"],
            rows: vec![vec![
                "127.0.0.1:23791".into(),
                "1827592406".into(),
                "3".into(),
            ]],
        };
        assert_eq!(
            render(&table, &BOX_DRAWING),
            "┌─────────────────┬────────────┬───────────────┐\n\
             │    ENDPOINT     │    HASH    │ HASH REVISION │\n\
             ├─────────────────┼────────────┼───────────────┤\n\
             │ 127.0.0.1:23791 │ 1827592406 │             3 │\n\
             └─────────────────┴────────────┴───────────────┘\n"
        );
    }
}
