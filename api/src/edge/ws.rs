//! `GET /graphql` upgraded to a WebSocket: subscriptions.
use actix_web::{HttpRequest, HttpResponse, web};
use async_graphql::Data;
use async_graphql_actix_web::GraphQLSubscription;

use super::{authenticate, client::ClientAddr};
use crate::{auth::Auth, graphql::AppSchema, state::AppState};

/// Serves one socket.
pub async fn graphql_ws(
    schema: web::Data<AppSchema>,
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> actix_web::Result<HttpResponse> {
    let st = AppState::clone(&state);
    let client = ClientAddr::of(&req, &state.settings.limits.trusted_proxies);
    GraphQLSubscription::new(AppSchema::clone(&schema))
        .on_connection_init(move |value| async move {
            let header = value
                .get("Authorization")
                .or_else(|| value.get("authorization"))
                .and_then(|v| v.as_str());
            let auth = authenticate(&st, header).await;
            if let Auth::Invalid(why) = auth {
                return Err(async_graphql::Error::new(why));
            }
            let mut data = Data::default();
            data.insert(auth);
            data.insert(client);
            Ok(data)
        })
        .start(&req, payload)
}
