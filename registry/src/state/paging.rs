//! Paging of listings in key order with opaque page tokens.
//!
//! A page token encodes the last key returned (base64url), so listing continues correctly when objects are
//! added or removed between pages. Owns nothing else; never allocates more than one page.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::DomainError;

/// Page size when the caller gives none.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page a caller can ask for.
pub const MAX_PAGE_SIZE: usize = 1000;

/// Which page to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// 1..=[`MAX_PAGE_SIZE`].
    pub page_size: usize,
    /// Continue after this key (decoded from the page token).
    pub after: Option<String>,
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            page_size: DEFAULT_PAGE_SIZE,
            after: None,
        }
    }
}

impl PageRequest {
    /// From the REST query parameters `page_size` and `page_token`. A size of 0 or none means the default;
    /// larger sizes are clamped; a malformed token is `Invalid`.
    pub fn new(page_size: Option<u64>, page_token: Option<&str>) -> Result<Self, DomainError> {
        let page_size = match page_size {
            None | Some(0) => DEFAULT_PAGE_SIZE,
            Some(n) => usize::try_from(n)
                .unwrap_or(MAX_PAGE_SIZE)
                .min(MAX_PAGE_SIZE),
        };
        let after = match page_token {
            None | Some("") => None,
            Some(t) => {
                let bytes = URL_SAFE_NO_PAD.decode(t).map_err(|_| {
                    DomainError::invalid("page_token", "not a token from a previous page")
                })?;
                let key = String::from_utf8(bytes).map_err(|_| {
                    DomainError::invalid("page_token", "not a token from a previous page")
                })?;
                Some(key)
            }
        };
        Ok(Self { page_size, after })
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Token for the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

impl<T> Page<T> {
    /// Pages `items`, which must come in ascending key order, keeping those after `req.after`.
    pub fn from_sorted<K: AsRef<str>>(
        items: impl IntoIterator<Item = (K, T)>,
        req: &PageRequest,
    ) -> Self {
        let size = req.page_size.clamp(1, MAX_PAGE_SIZE);
        let mut out = Vec::new();
        let mut last_key: Option<String> = None;
        let mut more = false;
        for (key, item) in items {
            if req.after.as_deref().is_some_and(|a| key.as_ref() <= a) {
                continue;
            }
            if out.len() == size {
                more = true;
                break;
            }
            last_key = Some(key.as_ref().to_owned());
            out.push(item);
        }
        let next_page_token = if more {
            last_key.map(|k| URL_SAFE_NO_PAD.encode(k.as_bytes()))
        } else {
            None
        };
        Page {
            items: out,
            next_page_token,
        }
    }

    /// Maps the items, keeping the token.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_page_token: self.next_page_token,
        }
    }
}
