//! `-w table`: olekukonko/tablewriter's boxes, as etcdctl draws them for members and endpoints
//! (cells right-aligned, headers upper-cased and centred).

use oxcd_proto::etcdserverpb::MemberListResponse;

use super::rows::{self, Rows};
use super::{EndpointHash, EndpointHealth, EndpointStatus, Printer};
use crate::failure::CtlResult;

pub struct TablePrinter;

fn render(table: &Rows) -> String {
    let header: Vec<String> = table.header.iter().map(|h| h.to_uppercase()).collect();
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
    let border = format!(
        "+{}+\n",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+")
    );
    let line = |cells: Vec<String>| format!("|{}|\n", cells.join("|"));
    let mut out = border.clone();
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
    out.push_str(&border);
    for row in &table.rows {
        out.push_str(&line(
            row.iter()
                .zip(&widths)
                .map(|(cell, w)| format!(" {cell:>w$} "))
                .collect(),
        ));
    }
    out.push_str(&border);
    out
}

impl Printer for TablePrinter {
    fn name(&self) -> &'static str {
        "table"
    }

    fn member_list(&self, r: &MemberListResponse) -> CtlResult {
        print!("{}", render(&rows::member_list(r)));
        Ok(())
    }

    fn endpoint_health(&self, health: &[EndpointHealth]) -> CtlResult {
        print!("{}", render(&rows::endpoint_health(health)));
        Ok(())
    }

    fn endpoint_status(&self, statuses: &[EndpointStatus]) -> CtlResult {
        print!("{}", render(&rows::endpoint_status(statuses)));
        Ok(())
    }

    fn endpoint_hash_kv(&self, hashes: &[EndpointHash]) -> CtlResult {
        print!("{}", render(&rows::endpoint_hash_kv(hashes)));
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
            render(&table),
            "+-----------------+------------+\n\
             |    ENDPOINT     |    HASH    |\n\
             +-----------------+------------+\n\
             | 127.0.0.1:42379 | 1114173141 |\n\
             +-----------------+------------+\n"
        );
    }
}
