//! A webhook's health and pace: failures that disable it, and its `maxPerSecond`.
use super::*;

/// A limiter of `per_second` sends per second, in bursts of up to as many.
pub(super) fn rate_limiter(per_second: u32) -> governor::DefaultDirectRateLimiter {
    let n = std::num::NonZeroU32::new(per_second).unwrap_or(std::num::NonZeroU32::MIN);
    governor::RateLimiter::direct(governor::Quota::per_second(n))
}

impl Deliveries {
    /// Notes a batch of attempts' results on their webhooks (async attempts only), in batch
    /// order: a success resets its webhook's failure count and what came before it for that
    /// webhook no longer matters, so the successes cost one UPDATE for the whole batch and
    /// only failures after a webhook's last success are tracked one by one.
    /// Returns the webhooks it disabled.
    pub(super) async fn track_health_batch(
        &self,
        tx: &impl ConnectionTrait,
        batch: &[Done],
        now: chrono::DateTime<Utc>,
    ) -> ApiResult<Vec<Uuid>> {
        use sea_orm::sea_query::Expr;
        let tracked = || {
            batch
                .iter()
                .enumerate()
                .filter(|(_, d)| d.delivery.mode == DeliveryMode::Async)
        };
        let last_success: HashMap<Uuid, usize> = tracked()
            .filter(|(_, d)| d.outcome.is_success())
            .map(|(i, d)| (d.delivery.webhook_id, i))
            .collect();
        if !last_success.is_empty() {
            webhook::Entity::update_many()
                .col_expr(
                    webhook::Column::FailingSince,
                    Option::<chrono::DateTime<Utc>>::None.into(),
                )
                .col_expr(webhook::Column::FailedAttempts, Expr::value(0))
                .filter(webhook::Column::Id.is_in(last_success.keys().copied()))
                .filter(webhook::Column::FailingSince.is_not_null())
                .exec(tx)
                .await?;
        }
        let mut disabled = Vec::new();
        for (i, d) in tracked() {
            let after_last_success = last_success
                .get(&d.delivery.webhook_id)
                .is_none_or(|&s| i > s);
            if !d.outcome.is_success()
                && after_last_success
                && self.track_failure(tx, d, now).await?
            {
                disabled.push(d.delivery.webhook_id);
            }
        }
        Ok(disabled)
    }

    /// Notes a failed async attempt on its webhook, and disables a webhook whose attempts
    /// have all failed for `PARLEY_WEBHOOK_DISABLE_AFTER` (and at least
    /// `DISABLE_MIN_FAILURES` of them), with a `webhook.disabled` event to the account's
    /// other webhooks that asked for it. Whether it disabled the webhook.
    async fn track_failure(
        &self,
        tx: &impl ConnectionTrait,
        d: &Done,
        now: chrono::DateTime<Utc>,
    ) -> ApiResult<bool> {
        use sea_orm::sea_query::{Expr, ExprTrait as _, Func};
        let hook = d.delivery.webhook_id;
        webhook::Entity::update_many()
            .col_expr(
                webhook::Column::FailingSince,
                Func::coalesce([Expr::col(webhook::Column::FailingSince), Expr::value(now)]).into(),
            )
            .col_expr(
                webhook::Column::FailedAttempts,
                Expr::col(webhook::Column::FailedAttempts).add(1),
            )
            .filter(webhook::Column::Id.eq(hook))
            .exec(tx)
            .await?;
        let window = chrono::Duration::from_std(self.settings.disable_after).unwrap_or_default();
        let reason = format!(
            "every attempt failed for {} s (PARLEY_WEBHOOK_DISABLE_AFTER); last: {}",
            self.settings.disable_after.as_secs(),
            d.outcome
                .error
                .clone()
                .or_else(|| d.outcome.status.map(|s| format!("HTTP {s}")))
                .unwrap_or_else(|| "failed".into())
        );
        let disabled = webhook::Entity::update_many()
            .col_expr(webhook::Column::DisabledAt, Some(now).into())
            .col_expr(webhook::Column::DisabledReason, Some(reason.clone()).into())
            .filter(webhook::Column::Id.eq(hook))
            .filter(webhook::Column::DisabledAt.is_null())
            .filter(webhook::Column::FailingSince.lte(now - window))
            .filter(webhook::Column::FailedAttempts.gte(DISABLE_MIN_FAILURES))
            .exec(tx)
            .await?
            .rows_affected;
        if disabled == 0 {
            return Ok(false);
        }
        tracing::warn!(webhook.id = %hook, account.id = %d.delivery.account_id, reason, "webhook disabled");
        let hooks: Vec<Uuid> = crate::lifecycle::subscribers(
            tx,
            d.delivery.account_id,
            crate::lifecycle::WEBHOOK_DISABLED,
        )
        .await?
        .into_iter()
        .filter(|h| *h != hook)
        .collect();
        crate::lifecycle::enqueue(
            tx,
            d.delivery.account_id,
            &hooks,
            None,
            crate::lifecycle::WEBHOOK_DISABLED,
            json!({ "webhook_id": hook, "disabled_at": now, "reason": reason }),
        )
        .await?;
        Ok(true)
    }

    /// Whether a webhook paced at `rate` sends per second (none: unpaced) may send one more
    /// now on this instance; a yes spends the rate's budget.
    pub(super) fn rate_allows(&self, hook: Uuid, rate: Option<i32>) -> bool {
        let Some(rate) = rate else {
            return true;
        };
        let rate = u32::try_from(rate.max(1)).unwrap_or(1);
        let mut rates = self
            .rates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if rates.len() > 10_000 {
            // Bounded memory: limiters of webhooks not seen lately start afresh.
            rates.clear();
        }
        let entry = rates
            .entry(hook)
            .or_insert_with(|| (rate, rate_limiter(rate)));
        if entry.0 != rate {
            *entry = (rate, rate_limiter(rate));
        }
        entry.1.check().is_ok()
    }
}
