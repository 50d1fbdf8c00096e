//! `Page`: the one pagination extractor. Every list route takes `limit` and `offset`
//! from the query, checked the same way (422 naming the parameter), with a default and
//! a documented maximum per route, so no list response grows with the store.
//!
//! It owns only the parsing; it must not know what is listed or how a route renders its
//! page.

use serde::Deserialize;

use super::{ApiError, LQuery};

/// `?limit=&offset=`: `1 <= limit <= MAX` (default `DEFAULT`), `offset >= 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page<const DEFAULT: usize = 100, const MAX: usize = 1000> {
    pub limit: usize,
    pub offset: usize,
}

#[derive(Debug, Deserialize)]
struct Raw {
    limit: Option<i64>,
    offset: Option<i64>,
}

impl<const DEFAULT: usize, const MAX: usize> Page<DEFAULT, MAX> {
    fn check(raw: Raw) -> Result<Self, ApiError> {
        let limit = raw.limit.unwrap_or(DEFAULT as i64);
        let offset = raw.offset.unwrap_or(0);
        if limit < 1 || limit > MAX as i64 {
            return Err(ApiError::validation(&["query", "limit"], format!("must be between 1 and {MAX}")));
        }
        if offset < 0 {
            return Err(ApiError::validation(&["query", "offset"], "must be 0 or more"));
        }
        Ok(Page { limit: limit as usize, offset: offset as usize })
    }

    /// The `pagination` object of a response: `count` items returned, `has_next` when
    /// more follow.
    pub fn render(&self, count: usize, has_next: bool) -> serde_json::Value {
        serde_json::json!({
            "limit": self.limit,
            "offset": self.offset,
            "count": count,
            "has_next": has_next,
            "next_offset": has_next.then_some(self.offset + count),
        })
    }
}

impl<S, const DEFAULT: usize, const MAX: usize> axum::extract::FromRequestParts<S> for Page<DEFAULT, MAX>
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        let LQuery(raw) = LQuery::<Raw>::from_request_parts(parts, state).await?;
        Self::check(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(limit: Option<i64>, offset: Option<i64>) -> Result<Page<10, 50>, ApiError> {
        Page::<10, 50>::check(Raw { limit, offset })
    }

    #[test]
    fn defaults_and_bounds() {
        assert_eq!(page(None, None).unwrap(), Page { limit: 10, offset: 0 });
        assert_eq!(page(Some(50), Some(7)).unwrap(), Page { limit: 50, offset: 7 });
        assert!(page(Some(0), None).is_err());
        assert!(page(Some(51), None).is_err());
        assert!(page(None, Some(-1)).is_err());
    }
}
