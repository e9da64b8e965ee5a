//! Pages and list bounds shared by every domain: page sizes, cursors, and the cost that a
//! list adds to a query, so that a query asking for too many nodes is refused before it runs.
use uuid::Uuid;

use crate::error::ApiError;

/// Most items on one page.
pub const MAX_PAGE: i32 = 100;
/// Items on a page when `first` is not given.
pub const DEFAULT_PAGE: i32 = 20;

/// `first` within 1..=MAX_PAGE (DEFAULT_PAGE when absent).
pub fn page_size(first: Option<i32>) -> Result<u64, ApiError> {
    match first.unwrap_or(DEFAULT_PAGE) {
        n if (1..=MAX_PAGE).contains(&n) => Ok(n as u64),
        n => Err(ApiError::bad_input(format!(
            "first must be between 1 and {MAX_PAGE}, not {n}"
        ))),
    }
}

/// A cursor (an id) from a page's `endCursor`.
pub fn parse_cursor(after: Option<&str>) -> Result<Option<Uuid>, ApiError> {
    after
        .map(|c| {
            Uuid::parse_str(c)
                .map_err(|_| ApiError::bad_input(format!("{c:?} is not a cursor from this list")))
        })
        .transpose()
}

/// The query cost of a page of `first` items whose selection costs `child` each: the page's
/// items multiply what is asked of each one. Out-of-range sizes count as the largest page
/// (the resolver refuses them anyway).
pub fn page_cost(first: Option<i32>, child: usize) -> usize {
    let n = match first.unwrap_or(DEFAULT_PAGE) {
        n if (1..=MAX_PAGE).contains(&n) => n,
        _ => MAX_PAGE,
    };
    list_cost(n as usize, child)
}

/// The query cost of a list of at most `items` items whose selection costs `child` each.
/// Capped far above any limit, so that async-graphql's sum of sibling costs cannot overflow
/// (it adds without saturating, and a wrapped sum would let a huge query pass).
pub fn list_cost(items: usize, child: usize) -> usize {
    items
        .saturating_mul(child)
        .saturating_add(1)
        .min(COST_CEILING)
}

/// The most one field can cost: a query of a million such fields still sums without overflow.
const COST_CEILING: usize = 1 << 32;

/// Lists that are not paged return at most this many items (oldest first), and cost as if
/// they held `LIST_COST_ITEMS`: a bound on what one query can make the server do.
pub const MAX_LIST: u64 = 1000;
/// What an unpaged list counts for in a query's cost.
pub const LIST_COST_ITEMS: usize = 50;
