//! A team member's live subscription lasts only as long as their access: it ends at the
//! token's expiry, at log-out, and when the member is removed from the account, on whichever
//! instance that happens (the bus carries access changes).
use async_graphql::futures_util::{Stream, StreamExt as _, stream::BoxStream};
use entity::Role;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use crate::{
    accounts::AccountAccess,
    auth::Viewer,
    error::{ApiError, ApiResult},
    state::AppState,
};

/// Whether `viewer` may still watch `account_id`: session open and still a member.
async fn still_allowed(st: &AppState, viewer: &Viewer, account_id: Uuid) -> ApiResult<()> {
    st.sessions.require_open(&st.db, viewer, true).await?;
    AccountAccess::require(st.db.conn(), viewer.user_id, account_id, Role::Member)
        .await
        .map_err(|e| match e {
            ApiError::NotFound(_) => {
                ApiError::Forbidden("you are no longer a member of this account".into())
            }
            other => other,
        })?;
    Ok(())
}

/// `inner`, ended with an error as soon as `viewer` may no longer watch `account_id`.
pub fn guard<T: Send + 'static>(
    st: AppState,
    viewer: Viewer,
    account_id: Uuid,
    inner: impl Stream<Item = async_graphql::Result<T>> + Send + 'static,
) -> BoxStream<'static, async_graphql::Result<T>> {
    let mut changes = st.runtime.bus().subscribe_access();
    let expiry = (viewer.expires_at - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    async_stream::stream! {
        // Once more now that changes are being listened to: a removal committed after the
        // caller's check but before the subscription above is not missed.
        // The checks are boxed: inline, their futures would size every idle subscription.
        if let Err(e) = Box::pin(still_allowed(&st, &viewer, account_id)).await {
            yield Err(e.into());
            return;
        }
        let inner = inner;
        futures_util::pin_mut!(inner);
        let expired = tokio::time::sleep(expiry);
        futures_util::pin_mut!(expired);
        loop {
            tokio::select! {
                item = inner.next() => match item {
                    Some(item) => yield item,
                    None => return,
                },
                () = &mut expired => {
                    yield Err(ApiError::Unauthenticated(
                        "the token has expired; log in again".into(),
                    ).into());
                    return;
                }
                change = changes.recv() => {
                    let concerns_us = match change {
                        Ok(user) => user == viewer.user_id || user.is_nil(),
                        // Missed some: check anyway.
                        Err(RecvError::Lagged(_)) => true,
                        // The bus is gone: the server is stopping.
                        Err(RecvError::Closed) => return,
                    };
                    if concerns_us
                        && let Err(e) = Box::pin(still_allowed(&st, &viewer, account_id)).await
                    {
                        tracing::info!(user.id = %viewer.user_id, account.id = %account_id, reason = e.message(), "team subscription ended");
                        yield Err(e.into());
                        return;
                    }
                }
            }
        }
    }
    .boxed()
}
