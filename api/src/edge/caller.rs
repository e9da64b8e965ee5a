//! What the edge learnt of an operation's sender, handed to the schema as one piece of data.
use async_graphql::Context;

use super::{client::ClientAddr, origin::RequestOrigin};
use crate::auth::Auth;

/// Who sent a GraphQL operation, as the edge found it: credentials, address and origin. Put in
/// a request's (or a socket's) data as one value, not three: each piece of data is a boxed
/// entry of a map, made and dropped for every request.
#[derive(Clone)]
pub struct Caller {
    pub auth: Auth,
    pub client: ClientAddr,
    pub origin: RequestOrigin,
}

/// No credentials, for an operation the edge named no caller of.
static ANONYMOUS: Auth = Auth::Anonymous;

/// The credentials of the operation of `ctx`: `Anonymous` when none were given.
pub fn auth<'a>(ctx: &'a Context<'_>) -> &'a Auth {
    ctx.data_opt::<Caller>().map_or(&ANONYMOUS, |c| &c.auth)
}

/// The client address of the operation of `ctx`, when the edge knows it.
pub fn client<'a>(ctx: &'a Context<'_>) -> Option<&'a ClientAddr> {
    ctx.data_opt::<Caller>().map(|c| &c.client)
}

/// The origin of the operation of `ctx`, when the edge knows it.
pub fn origin<'a>(ctx: &'a Context<'_>) -> Option<&'a RequestOrigin> {
    ctx.data_opt::<Caller>().map(|c| &c.origin)
}
