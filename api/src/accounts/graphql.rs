//! GraphQL surface of accounts: thin resolvers over `service`.
use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, Enum, ID, InputObject, Object, SimpleObject, dataloader::DataLoader};
use entity::{Role, account, invitation, membership, user};
use uuid::Uuid;

use super::{loader::UserLoader, service};
use crate::{
    accounts::AccountAccess,
    audit::{self, AuditEntry},
    auth::{person, viewer, viewer_session},
    edge::caller,
    error::ApiError,
    error::ApiResult,
    ids::{parse_id, to_id},
    state::AppState,
    state::state,
};

/// A member's role in an account.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "Role", remote = "entity::Role")]
pub enum RoleGql {
    Owner,
    Admin,
    Member,
}

/// A person who logs in, as seen by `viewer`.
pub struct User {
    pub model: user::Model,
    pub viewer: Uuid,
}

#[Object]
impl User {
    async fn id(&self) -> ID {
        to_id(self.model.id)
    }
    async fn email(&self) -> &str {
        &self.model.email
    }
    async fn name(&self) -> &str {
        &self.model.name
    }
    /// The user's memberships; of a teammate, only those of accounts shared with the viewer.
    /// At most `MAX_LIST` (1000), oldest first.
    #[graphql(
        complexity = "crate::pagination::list_cost(crate::pagination::LIST_COST_ITEMS, child_complexity)"
    )]
    async fn memberships(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Membership>> {
        let st = state(ctx)?;
        let list = service::visible_memberships(&st.db, self.viewer, self.model.id).await?;
        Ok(list
            .into_iter()
            .map(|m| Membership {
                model: m,
                viewer: self.viewer,
            })
            .collect())
    }
}

/// A user's place in an account, as seen by `viewer`.
pub struct Membership {
    pub model: membership::Model,
    pub viewer: Uuid,
}

#[Object]
impl Membership {
    async fn role(&self) -> RoleGql {
        self.model.role.into()
    }
    async fn account(&self, ctx: &Context<'_>) -> async_graphql::Result<Account> {
        let st = state(ctx)?;
        let account = service::account_for(&st.db, self.viewer, self.model.account_id)
            .await?
            .ok_or_else(|| ApiError::not_found("account"))?;
        Ok(Account(account))
    }
    async fn user(&self, ctx: &Context<'_>) -> async_graphql::Result<User> {
        let loader = ctx.data::<DataLoader<UserLoader>>()?;
        let model = loader
            .load_one(self.model.user_id)
            .await
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("loading a user: {e}")))?
            .ok_or_else(|| ApiError::not_found("user"))?;
        Ok(User {
            model,
            viewer: self.viewer,
        })
    }
    /// When the user joined the account.
    async fn joined_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.model.created_at
    }
}

/// A team: owns bots, webhooks and conversations.
pub struct Account(pub account::Model);

#[Object]
impl Account {
    async fn id(&self) -> ID {
        to_id(self.0.id)
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
    /// At most `MAX_LIST` (1000), oldest first.
    #[graphql(
        complexity = "crate::pagination::list_cost(crate::pagination::LIST_COST_ITEMS, child_complexity)"
    )]
    async fn members(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Membership>> {
        let st = state(ctx)?;
        let me = viewer(ctx)?;
        let list = service::members(&st.db, self.0.id).await?;
        Ok(list
            .into_iter()
            .map(|m| Membership {
                model: m,
                viewer: me,
            })
            .collect())
    }
    /// The account's bots, oldest first (at most PARLEY_MAX_BOTS_PER_ACCOUNT).
    #[graphql(
        complexity = "crate::pagination::list_cost(crate::pagination::LIST_COST_ITEMS, child_complexity)"
    )]
    async fn bots(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<crate::bots::graphql::Bot>> {
        crate::bots::graphql::account_bots(ctx, self.0.id).await
    }
    /// Pending invitations (OWNER, ADMIN), oldest first; their tokens are not shown again.
    #[graphql(
        complexity = "crate::pagination::list_cost(crate::pagination::LIST_COST_ITEMS, child_complexity)"
    )]
    async fn invitations(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Invitation>> {
        let st = state(ctx)?;
        let list = service::pending_invitations(&st.db, person(ctx)?, self.0.id).await?;
        Ok(list
            .into_iter()
            .map(|m| Invitation::new(m, String::new()))
            .collect())
    }

    /// The account's API keys that are not revoked (OWNER, ADMIN), oldest first.
    #[graphql(
        complexity = "crate::pagination::list_cost(crate::pagination::LIST_COST_ITEMS, child_complexity)"
    )]
    async fn api_keys(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<crate::apikeys::graphql::ApiKey>> {
        crate::apikeys::graphql::account_api_keys(ctx, self.0.id).await
    }

    /// Who did what, newest first (OWNER, ADMIN): members invited, joined, removed, role
    /// changes, webhooks created, changed, deleted or rotated, bots published.
    #[graphql(complexity = "crate::pagination::page_cost(first, child_complexity)")]
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, AuditEntry>> {
        let st = state(ctx)?;
        AccountAccess::require(st.db.conn(), viewer(ctx)?, self.0.id, Role::Admin).await?;
        let (rows, more) = audit::page(st.db.conn(), self.0.id, first, after.as_deref()).await?;
        let mut page = Connection::new(after.is_some(), more);
        page.edges.extend(
            rows.into_iter()
                .map(|m| Edge::new(m.id.to_string(), AuditEntry::from(m))),
        );
        Ok(page)
    }

    /// The account's webhooks page, oldest first (at most PARLEY_MAX_WEBHOOKS_PER_ACCOUNT).
    #[graphql(
        complexity = "crate::pagination::list_cost(crate::pagination::LIST_COST_ITEMS, child_complexity)"
    )]
    async fn webhooks(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<crate::webhooks::graphql::Webhook>> {
        crate::webhooks::graphql::account_webhooks(ctx, self.0.id).await
    }
}

/// An invitation; `token` is shown only in the answer to `inviteMember` (empty when listed).
#[derive(SimpleObject)]
pub struct Invitation {
    id: ID,
    email: String,
    role: RoleGql,
    token: String,
    expires_at: chrono::DateTime<chrono::Utc>,
    /// Who sent it (a user id).
    invited_by: ID,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl Invitation {
    fn new(model: invitation::Model, token: String) -> Self {
        Self {
            id: to_id(model.id),
            email: model.email,
            role: model.role.into(),
            token,
            expires_at: model.expires_at,
            invited_by: to_id(model.invited_by),
            created_at: model.created_at,
        }
    }
}

/// A login token and its user.
pub struct AuthPayload {
    token: String,
    user: user::Model,
}

impl AuthPayload {
    /// A new session of `user` and its token.
    async fn open(st: &AppState, user: user::Model) -> ApiResult<Self> {
        let session = st
            .sessions
            .open(st.db.writer(), user.id, st.keys.ttl())
            .await?;
        let token = st.keys.issue(&session).map_err(ApiError::Internal)?;
        Ok(Self { token, user })
    }
}

#[Object]
impl AuthPayload {
    /// Send it as `Authorization: Bearer <token>`.
    async fn token(&self) -> &str {
        &self.token
    }
    async fn user(&self) -> User {
        User {
            model: self.user.clone(),
            viewer: self.user.id,
        }
    }
}

/// Sign-up details.
#[derive(InputObject)]
pub struct SignUpInput {
    email: String,
    password: String,
    name: String,
    account_name: String,
}

/// Queries of accounts.
#[derive(Default)]
pub struct AccountsQuery;

#[Object]
impl AccountsQuery {
    /// The logged-in user.
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<User> {
        let st = state(ctx)?;
        let me = person(ctx)?;
        Ok(User {
            model: st.users.get(&st.db, me).await?,
            viewer: me,
        })
    }

    /// An account the viewer belongs to; null for any other id.
    async fn account(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Account>> {
        let st = state(ctx)?;
        let me = viewer(ctx)?;
        let Ok(id) = parse_id(&id, "account") else {
            return Ok(None);
        };
        Ok(service::account_for(&st.db, me, id).await?.map(Account))
    }
}

/// Mutations of accounts.
#[derive(Default)]
pub struct AccountsMutation;

#[Object]
impl AccountsMutation {
    /// A new user with a new account, the user its OWNER.
    async fn sign_up(
        &self,
        ctx: &Context<'_>,
        input: SignUpInput,
    ) -> async_graphql::Result<AuthPayload> {
        let st = state(ctx)?;
        st.limiters.login_from(caller::client(ctx))?;
        let user = service::sign_up(
            &st.db,
            &st.passwords,
            &input.email,
            &input.password,
            &input.name,
            &input.account_name,
        )
        .await?;
        Ok(AuthPayload::open(st, user).await?)
    }

    /// A token for a user's email and password.
    async fn log_in(
        &self,
        ctx: &Context<'_>,
        email: String,
        password: String,
    ) -> async_graphql::Result<AuthPayload> {
        let st = state(ctx)?;
        let user = service::log_in(
            &st.db,
            &st.passwords,
            &st.limiters,
            caller::client(ctx),
            &email,
            &password,
        )
        .await?;
        Ok(AuthPayload::open(st, user).await?)
    }

    /// A new account; the viewer becomes its OWNER.
    async fn create_account(
        &self,
        ctx: &Context<'_>,
        name: String,
    ) -> async_graphql::Result<Account> {
        let st = state(ctx)?;
        Ok(Account(
            service::create_account(&st.db, person(ctx)?, &name).await?,
        ))
    }

    /// Invites someone by email (OWNER, ADMIN; only an OWNER invites an OWNER).
    async fn invite_member(
        &self,
        ctx: &Context<'_>,
        account_id: ID,
        email: String,
        role: RoleGql,
    ) -> async_graphql::Result<Invitation> {
        let st = state(ctx)?;
        let me = person(ctx)?;
        let account_id = parse_id(&account_id, "account")?;
        let new = service::invite_member(&st.db, me, account_id, &email, role.into()).await?;
        Ok(Invitation::new(new.invitation, new.token))
    }

    /// Takes back a pending invitation (OWNER, ADMIN): its token stops working.
    async fn revoke_invitation(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let st = state(ctx)?;
        let id = parse_id(&id, "invitation")?;
        Ok(service::revoke_invitation(&st.db, person(ctx)?, id).await?)
    }

    /// Ends this token's session: the token stops working, here and on every instance.
    async fn log_out(&self, ctx: &Context<'_>) -> async_graphql::Result<bool> {
        let st = state(ctx)?;
        person(ctx)?;
        let session = viewer_session(ctx)?;
        st.sessions.end(st.db.writer(), &session).await?;
        st.runtime.bus().publish_access(session.user_id).await;
        Ok(true)
    }

    /// Ends every session of the viewer: all their tokens stop working.
    async fn log_out_everywhere(&self, ctx: &Context<'_>) -> async_graphql::Result<bool> {
        let st = state(ctx)?;
        let me = person(ctx)?;
        st.sessions.end_all(st.db.writer(), me).await?;
        st.runtime.bus().publish_access(me).await;
        Ok(true)
    }

    /// Replaces the viewer's password; every other token of theirs stops working, and the
    /// answer holds a fresh one.
    async fn change_password(
        &self,
        ctx: &Context<'_>,
        current_password: String,
        new_password: String,
    ) -> async_graphql::Result<AuthPayload> {
        let st = state(ctx)?;
        let me = person(ctx)?;
        // Password guesses cost like log-ins: the same per-address budget.
        st.limiters.login_from(caller::client(ctx))?;
        service::change_password(
            &st.db,
            &st.passwords,
            &st.sessions,
            me,
            &current_password,
            &new_password,
        )
        .await?;
        st.runtime.bus().publish_access(me).await;
        let user = st.users.get(&st.db, me).await?;
        Ok(AuthPayload::open(st, user).await?)
    }

    /// Joins the account of an invitation addressed to the viewer's email.
    async fn accept_invitation(
        &self,
        ctx: &Context<'_>,
        token: String,
    ) -> async_graphql::Result<Membership> {
        let st = state(ctx)?;
        let me = person(ctx)?;
        Ok(Membership {
            model: service::accept_invitation(&st.db, &st.users, me, &token).await?,
            viewer: me,
        })
    }

    /// Removes a member (OWNER); an account always keeps one OWNER.
    async fn remove_member(
        &self,
        ctx: &Context<'_>,
        account_id: ID,
        user_id: ID,
    ) -> async_graphql::Result<bool> {
        let st = state(ctx)?;
        let me = person(ctx)?;
        let account_id = parse_id(&account_id, "account")?;
        let user_id = parse_id(&user_id, "member")?;
        service::remove_member(&st.db, me, account_id, user_id).await?;
        st.runtime.bus().publish_access(user_id).await;
        Ok(true)
    }

    /// Changes a member's role (OWNER); an account always keeps one OWNER.
    async fn change_member_role(
        &self,
        ctx: &Context<'_>,
        account_id: ID,
        user_id: ID,
        role: RoleGql,
    ) -> async_graphql::Result<Membership> {
        let st = state(ctx)?;
        let me = person(ctx)?;
        let account_id = parse_id(&account_id, "account")?;
        let user_id = parse_id(&user_id, "member")?;
        let model =
            service::change_member_role(&st.db, me, account_id, user_id, role.into()).await?;
        st.runtime.bus().publish_access(user_id).await;
        Ok(Membership { model, viewer: me })
    }
}
