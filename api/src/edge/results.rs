//! `GET /bots/{botId}/results.csv?from=&to=&status=`: a bot's results as CSV, for a member of
//! its account (login token or API key), streamed from the database.
use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};
use chrono::{DateTime, Utc};
use entity::Role;
use futures_util::StreamExt as _;
use serde::Deserialize;

use super::{Auth, authenticate_request, request_error};
use crate::{
    bots::service::find_bot,
    error::{ApiError, ApiResult},
    results::{self, ResultsFilter},
    state::AppState,
};

/// The query string.
#[derive(Deserialize)]
pub struct ExportQuery {
    from: Option<String>,
    to: Option<String>,
    status: Option<String>,
}

fn parse_time(name: &str, raw: Option<&str>) -> ApiResult<Option<DateTime<Utc>>> {
    raw.map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::bad_input(format!(
                        "`{name}` must be an RFC 3339 time such as 2026-11-28T00:00:00Z, not {v:?}"
                    ))
                })
        })
        .transpose()
}

fn filter_of(q: &ExportQuery) -> ApiResult<ResultsFilter> {
    let status = match q.status.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(results::parse_status(s).ok_or_else(|| {
            ApiError::bad_input(format!(
                "`status` must be ACTIVE, COMPLETED or ABANDONED, not {s:?}"
            ))
        })?),
    };
    let filter = ResultsFilter {
        from: parse_time("from", q.from.as_deref())?,
        to: parse_time("to", q.to.as_deref())?,
        status,
    };
    filter.check()?;
    Ok(filter)
}

fn error_response(e: &ApiError) -> HttpResponse {
    let status = match e.code() {
        "UNAUTHENTICATED" => StatusCode::UNAUTHORIZED,
        "FORBIDDEN" => StatusCode::FORBIDDEN,
        "NOT_FOUND" => StatusCode::NOT_FOUND,
        "BAD_USER_INPUT" => StatusCode::BAD_REQUEST,
        "RATE_LIMITED" => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    request_error(status, e.code(), e.message())
}

/// The export.
pub async fn results_csv(
    state: web::Data<AppState>,
    req: HttpRequest,
    bot_id: web::Path<String>,
    query: web::Query<ExportQuery>,
) -> HttpResponse {
    let auth = match authenticate_request(&state, &req).await {
        Ok(auth) => auth,
        Err(refused) => return refused,
    };
    match prepare(&state, &auth, &bot_id, &query).await {
        Ok((bot_id, fields, filter)) => {
            let body = results::export(state.db.clone(), bot_id, fields, filter).map(|chunk| {
                chunk
                    .map_err(|e| actix_web::error::ErrorInternalServerError(e.message().to_owned()))
            });
            HttpResponse::Ok()
                .content_type("text/csv; charset=utf-8")
                .insert_header((
                    "content-disposition",
                    format!("attachment; filename=\"results-{bot_id}.csv\""),
                ))
                .insert_header(("cache-control", "no-store"))
                .streaming(body)
        }
        Err(e) => error_response(&e),
    }
}

async fn prepare(
    state: &AppState,
    auth: &Auth,
    bot_id: &str,
    query: &ExportQuery,
) -> ApiResult<(uuid::Uuid, Vec<String>, ResultsFilter)> {
    let viewer = auth.user_id()?;
    let filter = filter_of(query)?;
    let bot_id = uuid::Uuid::parse_str(bot_id).map_err(|_| ApiError::not_found("bot"))?;
    let bot = find_bot(state.db.conn(), viewer, bot_id, Role::Member).await?;
    let fields = results::result_fields(&state.db, bot.bot.id).await?;
    Ok((bot.bot.id, fields, filter))
}
