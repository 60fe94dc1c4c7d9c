//! Walking a key pattern with `SCAN`, a page at a time, so that no single
//! command blocks Redis however many keys match.

use redis::aio::ConnectionLike;

/// A `SCAN MATCH pattern COUNT count` walk.
#[derive(Debug)]
pub struct Scan {
    pattern: String,
    count: usize,
    cursor: Option<u64>,
}

impl Scan {
    /// A walk over keys matching `pattern`, about `count` per page.
    pub fn new(pattern: String, count: usize) -> Self {
        Self {
            pattern,
            count,
            cursor: Some(0),
        }
    }

    /// The next page of keys (possibly empty), or `None` when the walk is
    /// over.
    pub async fn next_page<C: ConnectionLike + Send>(
        &mut self,
        con: &mut C,
    ) -> redis::RedisResult<Option<Vec<String>>> {
        let Some(cursor) = self.cursor else {
            return Ok(None);
        };
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&self.pattern)
            .arg("COUNT")
            .arg(self.count)
            .query_async(con)
            .await?;
        self.cursor = (next != 0).then_some(next);
        Ok(Some(keys))
    }
}
