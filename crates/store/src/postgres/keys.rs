//! Raw access to sealed columns for key rotation and status (see [`crate::crypto`]).

use super::{Param, PgStore, execute, query};
use crate::Result;
use crate::crypto::{CellSwap, KeyPart, Keys, RawRow, SealedTable};

fn param(k: &KeyPart) -> Param<'_> {
    match k {
        KeyPart::Text(s) => s,
        KeyPart::Int(i) => i,
    }
}

impl PgStore {
    pub(crate) fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// Up to `limit` rows of `table` after the key `after`, in key order, with the stored
    /// text of each sealed column.
    pub(crate) async fn sealed_page(
        &self,
        table: &'static SealedTable,
        after: Option<Vec<KeyPart>>,
        limit: usize,
    ) -> Result<Vec<RawRow>> {
        let keys: Vec<&str> = table.key.iter().map(|(k, _)| *k).collect();
        let cols: Vec<&str> = table.columns.iter().map(|(c, _)| *c).collect();
        let key_list = keys.join(", ");
        let filter = match &after {
            Some(_) => {
                let marks: Vec<String> = (1..=keys.len()).map(|i| format!("${i}")).collect();
                format!("WHERE ({key_list}) > ({})", marks.join(", "))
            }
            None => String::new(),
        };
        let sql = format!(
            "SELECT {key_list}, {} FROM {} {filter} ORDER BY {key_list} LIMIT {limit}",
            cols.join(", "),
            table.name
        );
        let args: Vec<Param<'_>> = after.iter().flatten().map(param).collect();
        let c = self.client().await?;
        let rows = query(&c, &sql, &args).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut key = Vec::with_capacity(keys.len());
            for (i, (_, int)) in table.key.iter().enumerate() {
                key.push(if *int {
                    KeyPart::Int(r.try_get(i)?)
                } else {
                    KeyPart::Text(r.try_get(i)?)
                });
            }
            let mut cells = Vec::with_capacity(cols.len());
            for i in 0..cols.len() {
                cells.push(r.try_get::<_, Option<String>>(keys.len() + i)?);
            }
            out.push(RawRow { key, cells });
        }
        Ok(out)
    }

    /// Applies each swap while its cell still holds the old text, each as its own statement;
    /// returns how many were applied. No transaction spans the page: one holding many rows'
    /// locks deadlocked with the writes going on meanwhile (which lock rows in other orders),
    /// and a single-row compare-and-swap needs none.
    pub(crate) async fn swap_sealed(
        &self,
        table: &'static SealedTable,
        swaps: Vec<CellSwap>,
    ) -> Result<usize> {
        let c = self.client().await?;
        let mut done = 0;
        for s in &swaps {
            let col = table.columns[s.column].0;
            let mut cond = String::new();
            for (i, (k, _)) in table.key.iter().enumerate() {
                cond.push_str(&format!("{k} = ${} AND ", i + 3));
            }
            let sql = format!(
                "UPDATE {} SET {col} = $1 WHERE {cond}{col} = $2",
                table.name
            );
            let mut args: Vec<Param<'_>> = vec![&s.new, &s.old];
            args.extend(s.key.iter().map(param));
            done += execute(&c, &sql, &args).await? as usize;
        }
        Ok(done)
    }
}
