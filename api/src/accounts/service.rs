//! The accounts service: sign-up, log-in, teams and their members. Every read of an account
//! goes through a membership, so a stranger's ids answer NOT_FOUND.
use chrono::Utc;
use entity::{Role, account, api_key, invitation, membership, user};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, SqlErr,
};
use uuid::Uuid;

use crate::{
    audit,
    auth::password::{Password, Passwords},
    auth::session::Sessions,
    db::Db,
    edge::client::ClientAddr,
    error::{ApiError, ApiResult},
    limits::Limiters,
    opaque::{random_token, token_hash},
};

/// An email address, trimmed and lower-cased: the form that is stored and compared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// A pragmatic check: one `@`, a local part, a dotted domain, no spaces.
    pub fn parse(raw: &str) -> ApiResult<Self> {
        let email = raw.trim().to_lowercase();
        let invalid = || ApiError::bad_input(format!("{raw:?} is not a valid email address"));
        if email.len() > 254 || email.chars().any(char::is_whitespace) {
            return Err(invalid());
        }
        let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
        let labels_ok = domain.split('.').all(|l| !l.is_empty());
        if local.is_empty() || domain.contains('@') || !domain.contains('.') || !labels_ok {
            return Err(invalid());
        }
        Ok(Self(email))
    }

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A display name: trimmed, 1 to 200 characters.
pub fn parse_name(what: &str, raw: &str) -> ApiResult<String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(ApiError::bad_input(format!("{what} must not be blank")));
    }
    if name.chars().count() > 200 {
        return Err(ApiError::bad_input(format!(
            "{what} must be at most 200 characters"
        )));
    }
    Ok(name.to_owned())
}

/// Role checks on an account, the gate of every tenant-owned operation.
pub struct AccountAccess;

impl AccountAccess {
    /// The viewer's role in `account_id`: NOT_FOUND when not a member, FORBIDDEN when the role
    /// is below `at_least`.
    ///
    /// `user_id` may be an API key's id (see [`crate::auth::Viewer`]): a key is a member of its
    /// own account only, with its role, for as long as it is not revoked.
    pub async fn require(
        db: &impl ConnectionTrait,
        user_id: Uuid,
        account_id: Uuid,
        at_least: Role,
    ) -> ApiResult<Role> {
        let role =
            match crate::db::by_key(membership::Entity::find_by_id((account_id, user_id)), db)
                .await?
            {
                Some(m) => m.role,
                None => crate::db::by_key(
                    api_key::Entity::find_by_id(user_id)
                        .filter(api_key::Column::AccountId.eq(account_id))
                        .filter(api_key::Column::RevokedAt.is_null()),
                    db,
                )
                .await?
                .map(|k| k.role)
                .ok_or_else(|| ApiError::not_found("account"))?,
            };
        Self::at_least(role, at_least)
    }

    /// Like [`Self::require`], for people only: an API key is no member here. For managing
    /// members and keys.
    pub async fn require_person(
        db: &impl ConnectionTrait,
        user_id: Uuid,
        account_id: Uuid,
        at_least: Role,
    ) -> ApiResult<Role> {
        let role = crate::db::by_key(membership::Entity::find_by_id((account_id, user_id)), db)
            .await?
            .map(|m| m.role)
            .ok_or_else(|| ApiError::not_found("account"))?;
        Self::at_least(role, at_least)
    }

    fn at_least(role: Role, at_least: Role) -> ApiResult<Role> {
        if role < at_least {
            return Err(ApiError::Forbidden(format!(
                "this needs the {} role or higher in the account",
                role_name(at_least)
            )));
        }
        Ok(role)
    }
}

/// The contract's name of a role.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Owner => "OWNER",
        Role::Admin => "ADMIN",
        Role::Member => "MEMBER",
    }
}

fn conflict_on_unique(e: sea_orm::DbErr, message: &str) -> ApiError {
    match e.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => ApiError::Conflict(message.to_owned()),
        _ => e.into(),
    }
}

/// A new user and their first account, the user its OWNER.
pub async fn sign_up(
    db: &Db,
    passwords: &Passwords,
    email: &str,
    password: &str,
    name: &str,
    account_name: &str,
) -> ApiResult<user::Model> {
    let email = Email::parse(email)?;
    let password = Password::parse(password)?;
    let name = parse_name("name", name)?;
    let account_name = parse_name("accountName", account_name)?;
    let taken = || ApiError::Conflict("an account with this email already exists".into());
    if user::Entity::find()
        .filter(user::Column::Email.eq(email.as_str()))
        .count(db.conn())
        .await?
        > 0
    {
        return Err(taken());
    }
    let password_hash = passwords.hash(password).await?;
    let now = Utc::now();
    let user = user::Model {
        id: Uuid::now_v7(),
        email: email.as_str().to_owned(),
        name,
        password_hash,
        created_at: now,
    };
    let tx = db.write().await?;
    user::Entity::insert(user::ActiveModel::from(user.clone()))
        .exec_without_returning(&tx.tx)
        .await
        .map_err(|e| conflict_on_unique(e, "an account with this email already exists"))?;
    insert_account(&tx.tx, user.id, account_name).await?;
    tx.commit().await?;
    Ok(user)
}

async fn insert_account(
    tx: &impl ConnectionTrait,
    owner: Uuid,
    name: String,
) -> ApiResult<account::Model> {
    let now = Utc::now();
    let account = account::Model {
        id: Uuid::now_v7(),
        name,
        created_at: now,
    };
    account::Entity::insert(account::ActiveModel::from(account.clone()))
        .exec_without_returning(tx)
        .await?;
    membership::Entity::insert(membership::ActiveModel {
        account_id: Set(account.id),
        user_id: Set(owner),
        role: Set(Role::Owner),
        created_at: Set(now),
    })
    .exec_without_returning(tx)
    .await?;
    Ok(account)
}

/// The user whose email and password match; the same error, after similar work, for an
/// unknown email and a wrong password.
///
/// Attempts are limited per client address first, then per email (validated first, so the
/// limiter only ever keys real addresses), before any password work.
pub async fn log_in(
    db: &Db,
    passwords: &Passwords,
    limiters: &Limiters,
    client: Option<&ClientAddr>,
    email: &str,
    password: &str,
) -> ApiResult<user::Model> {
    limiters.login_from(client)?;
    let email = Email::parse(email).ok();
    if let Some(email) = &email {
        limiters.logins_by_email.check(&email.as_str().to_owned())?;
    }
    let user = match email {
        Some(email) => {
            user::Entity::find()
                .filter(user::Column::Email.eq(email.as_str()))
                .one(db.conn())
                .await?
        }
        None => None,
    };
    let ok = passwords
        .verify(password, user.as_ref().map(|u| u.password_hash.clone()))
        .await?;
    match user {
        Some(user) if ok => Ok(user),
        _ => Err(ApiError::Unauthenticated("wrong email or password".into())),
    }
}

/// Users recently looked up by id. Every authenticated request starts with the viewer; the
/// fields read through this cache (email, name) never change once created, so a short-lived
/// copy saves a query per request. The password hash, which `changePassword` does change, is
/// never read from it: log-in and password checks read the database.
pub struct UserCache(crate::hot_cache::HotCache<Uuid, user::Model>);

impl Default for UserCache {
    fn default() -> Self {
        Self(crate::hot_cache::HotCache::new(
            100_000,
            Some(std::time::Duration::from_secs(60)),
        ))
    }
}

impl UserCache {
    /// A user by id (the viewer, or someone met through a shared account).
    pub async fn get(&self, db: &Db, id: Uuid) -> ApiResult<user::Model> {
        if let Some(user) = self.0.get(&id) {
            return Ok(user);
        }
        let user = user::Entity::find_by_id(id)
            .one(db.conn())
            .await?
            .ok_or_else(|| {
                ApiError::Unauthenticated("the user of this token no longer exists".into())
            })?;
        self.0.insert(id, user.clone());
        Ok(user)
    }
}

/// A new account owned by the viewer.
pub async fn create_account(db: &Db, viewer: Uuid, name: &str) -> ApiResult<account::Model> {
    let name = parse_name("name", name)?;
    let tx = db.write().await?;
    let account = insert_account(&tx.tx, viewer, name).await?;
    tx.commit().await?;
    Ok(account)
}

/// An account the viewer belongs to; `None` for any other id.
pub async fn account_for(db: &Db, viewer: Uuid, id: Uuid) -> ApiResult<Option<account::Model>> {
    if let Some(account) = account::Entity::find_for_member(id, viewer)
        .one(db.conn())
        .await?
    {
        return Ok(Some(account));
    }
    // An API key (its id as `viewer`) reaches its own account only.
    match AccountAccess::require(db.conn(), viewer, id, Role::Member).await {
        Ok(_) => Ok(account::Entity::find_by_id(id).one(db.conn()).await?),
        Err(ApiError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The members of an account the viewer belongs to.
pub async fn members(db: &Db, account_id: Uuid) -> ApiResult<Vec<membership::Model>> {
    Ok(membership::Entity::find_in_account(account_id)
        .order_by_asc(membership::Column::CreatedAt)
        .limit(crate::pagination::MAX_LIST)
        .all(db.conn())
        .await?)
}

/// The memberships of `user_id` that `viewer` may see: all of them for oneself, the shared
/// accounts' for a teammate.
pub async fn visible_memberships(
    db: &Db,
    viewer: Uuid,
    user_id: Uuid,
) -> ApiResult<Vec<membership::Model>> {
    let all = membership::Entity::find()
        .filter(membership::Column::UserId.eq(user_id))
        .order_by_asc(membership::Column::CreatedAt)
        .limit(crate::pagination::MAX_LIST)
        .all(db.conn())
        .await?;
    if viewer == user_id {
        return Ok(all);
    }
    let mine: Vec<Uuid> = membership::Entity::find()
        .filter(membership::Column::UserId.eq(viewer))
        .all(db.conn())
        .await?
        .into_iter()
        .map(|m| m.account_id)
        .collect();
    let mut mine = mine;
    if mine.is_empty()
        && let Some(key) = crate::db::by_key(
            api_key::Entity::find_by_id(viewer).filter(api_key::Column::RevokedAt.is_null()),
            db.conn(),
        )
        .await?
    {
        // An API key shares its own account with its members.
        mine.push(key.account_id);
    }
    Ok(all
        .into_iter()
        .filter(|m| mine.contains(&m.account_id))
        .collect())
}

/// An invitation and the token to redeem it, which is shown only now.
pub struct NewInvitation {
    pub invitation: invitation::Model,
    pub token: String,
}

/// How long an invitation can be redeemed.
const INVITATION_TTL_DAYS: i64 = 7;

/// Invites `email` with `role`: OWNER and ADMIN may invite, and only an OWNER may invite
/// another OWNER.
pub async fn invite_member(
    db: &Db,
    viewer: Uuid,
    account_id: Uuid,
    email: &str,
    role: Role,
) -> ApiResult<NewInvitation> {
    let my_role = AccountAccess::require_person(db.conn(), viewer, account_id, Role::Admin).await?;
    if role > my_role {
        return Err(ApiError::Forbidden(
            "only an OWNER can invite an OWNER".into(),
        ));
    }
    let email = Email::parse(email)?;
    let already = membership::Entity::find_in_account(account_id)
        .inner_join(user::Entity)
        .filter(user::Column::Email.eq(email.as_str()))
        .count(db.conn())
        .await?;
    if already > 0 {
        return Err(ApiError::Conflict(format!(
            "{} is already a member",
            email.as_str()
        )));
    }
    let token = random_token();
    let now = Utc::now();
    let invitation = invitation::Model {
        id: Uuid::now_v7(),
        account_id,
        email: email.as_str().to_owned(),
        role,
        token_hash: token_hash(&token),
        invited_by: viewer,
        expires_at: now + chrono::Duration::days(INVITATION_TTL_DAYS),
        accepted_at: None,
        created_at: now,
        revoked_at: None,
    };
    let tx = db.write().await?;
    invitation::Entity::insert(invitation::ActiveModel::from(invitation.clone()))
        .exec_without_returning(&tx.tx)
        .await?;
    audit::record(
        &tx.tx,
        audit::Entry {
            account_id,
            actor_id: Some(viewer),
            action: audit::action::MEMBER_INVITED,
            target_type: "invitation",
            target_id: invitation.id.to_string(),
            details: Some(
                serde_json::json!({ "email": invitation.email, "role": role_name(role) }),
            ),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(NewInvitation { invitation, token })
}

/// The pending invitations of an account (OWNER, ADMIN): not accepted, revoked or expired.
pub async fn pending_invitations(
    db: &Db,
    viewer: Uuid,
    account_id: Uuid,
) -> ApiResult<Vec<invitation::Model>> {
    AccountAccess::require_person(db.conn(), viewer, account_id, Role::Admin).await?;
    Ok(invitation::Entity::find()
        .filter(invitation::Column::AccountId.eq(account_id))
        .filter(invitation::Column::AcceptedAt.is_null())
        .filter(invitation::Column::RevokedAt.is_null())
        .filter(invitation::Column::ExpiresAt.gt(Utc::now()))
        .order_by_asc(invitation::Column::CreatedAt)
        .limit(crate::pagination::MAX_LIST)
        .all(db.conn())
        .await?)
}

/// Takes back a pending invitation (OWNER, ADMIN): its token stops working.
pub async fn revoke_invitation(db: &Db, viewer: Uuid, id: Uuid) -> ApiResult<bool> {
    let inv = invitation::Entity::find_by_id(id)
        .one(db.conn())
        .await?
        .ok_or_else(|| ApiError::not_found("invitation"))?;
    let my_role = AccountAccess::require_person(db.conn(), viewer, inv.account_id, Role::Admin)
        .await
        .map_err(|e| e.not_found_as("invitation"))?;
    if inv.role > my_role {
        return Err(ApiError::Forbidden(
            "only an OWNER can revoke an invitation to be OWNER".into(),
        ));
    }
    if inv.accepted_at.is_some() {
        return Err(ApiError::Conflict(
            "this invitation has already been accepted; remove the member instead".into(),
        ));
    }
    if inv.revoked_at.is_some() {
        return Ok(true);
    }
    let tx = db.write().await?;
    invitation::Entity::update(invitation::ActiveModel {
        id: Set(inv.id),
        revoked_at: Set(Some(Utc::now())),
        ..Default::default()
    })
    .exec(&tx.tx)
    .await?;
    audit::record(
        &tx.tx,
        audit::Entry {
            account_id: inv.account_id,
            actor_id: Some(viewer),
            action: audit::action::INVITATION_REVOKED,
            target_type: "invitation",
            target_id: inv.id.to_string(),
            details: Some(serde_json::json!({ "email": inv.email })),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Cancels the pending invitations `inviter` made in `account_id` that their role (`now`,
/// `None` once removed) no longer allows: an ADMIN about to be removed cannot keep a way back.
async fn cancel_invitations_of(
    tx: &impl ConnectionTrait,
    account_id: Uuid,
    inviter: Uuid,
    now_role: Option<Role>,
) -> ApiResult<()> {
    let mut q = invitation::Entity::update_many()
        .col_expr(
            invitation::Column::RevokedAt,
            sea_orm::sea_query::Expr::value(Utc::now()),
        )
        .filter(invitation::Column::AccountId.eq(account_id))
        .filter(invitation::Column::InvitedBy.eq(inviter))
        .filter(invitation::Column::AcceptedAt.is_null())
        .filter(invitation::Column::RevokedAt.is_null());
    match now_role {
        None | Some(Role::Member) => {}
        // An ADMIN may still have invited ADMINs and MEMBERs, not OWNERs.
        Some(Role::Admin) => q = q.filter(invitation::Column::Role.eq(Role::Owner)),
        Some(Role::Owner) => return Ok(()),
    }
    q.exec(tx).await?;
    Ok(())
}

/// Redeems an invitation for the viewer, whose email must be the invited one.
pub async fn accept_invitation(
    db: &Db,
    users: &UserCache,
    viewer: Uuid,
    token: &str,
) -> ApiResult<membership::Model> {
    let me = users.get(db, viewer).await?;
    let tx = db.write().await?;
    let inv = invitation::Entity::find()
        .filter(invitation::Column::TokenHash.eq(token_hash(token.trim())))
        .one(&tx.tx)
        .await?
        // A token for someone else reads like an unknown one: it reveals nothing.
        .filter(|inv| inv.email == me.email)
        .ok_or_else(|| ApiError::not_found("invitation"))?;
    if inv.revoked_at.is_some() {
        return Err(ApiError::Conflict(
            "this invitation was revoked; ask for a new one".into(),
        ));
    }
    // The inviter must still be allowed to invite to this role now, not only when inviting.
    let inviter_role = crate::db::by_key(
        membership::Entity::find_by_id((inv.account_id, inv.invited_by)),
        &tx.tx,
    )
    .await?
    .map(|m| m.role);
    if !inviter_role.is_some_and(|r| r >= Role::Admin && r >= inv.role) {
        return Err(ApiError::Conflict(
            "this invitation is no longer valid: whoever sent it may no longer invite; ask for a new one"
                .into(),
        ));
    }
    if inv.accepted_at.is_some() {
        return Err(ApiError::Conflict(
            "this invitation has already been accepted".into(),
        ));
    }
    if inv.expires_at < Utc::now() {
        return Err(ApiError::bad_input(
            "this invitation has expired; ask for a new one",
        ));
    }
    if crate::db::by_key(
        membership::Entity::find_by_id((inv.account_id, viewer)),
        &tx.tx,
    )
    .await?
    .is_some()
    {
        return Err(ApiError::Conflict(
            "you are already a member of this account".into(),
        ));
    }
    let now = Utc::now();
    let membership = membership::Model {
        account_id: inv.account_id,
        user_id: viewer,
        role: inv.role,
        created_at: now,
    };
    membership::Entity::insert(membership::ActiveModel::from(membership.clone()))
        .exec_without_returning(&tx.tx)
        .await?;
    invitation::Entity::update(invitation::ActiveModel {
        id: Set(inv.id),
        accepted_at: Set(Some(now)),
        ..Default::default()
    })
    .exec(&tx.tx)
    .await?;
    audit::record(
        &tx.tx,
        audit::Entry {
            account_id: inv.account_id,
            actor_id: Some(viewer),
            action: audit::action::MEMBER_JOINED,
            target_type: "member",
            target_id: viewer.to_string(),
            details: Some(serde_json::json!({ "role": role_name(inv.role), "invitation": inv.id.to_string() })),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(membership)
}

/// The membership of `user_id` in `account_id`, within `tx`. When `demoting` (it stops being an
/// OWNER), refuses if it is the account's last OWNER; on PostgreSQL the OWNER rows stay locked
/// until `tx` ends, so two owners removing each other cannot both succeed.
async fn member_for_change(
    db: &Db,
    tx: &impl ConnectionTrait,
    account_id: Uuid,
    user_id: Uuid,
    demoting: bool,
) -> ApiResult<membership::Model> {
    let target = crate::db::by_key(membership::Entity::find_by_id((account_id, user_id)), tx)
        .await?
        .ok_or_else(|| ApiError::not_found("member"))?;
    if target.role == Role::Owner && demoting {
        let mut owners = membership::Entity::find_in_account(account_id)
            .filter(membership::Column::Role.eq(Role::Owner));
        if db.kind() == crate::settings::DatabaseKind::Postgres {
            owners = owners.lock_exclusive();
        }
        if owners.all(tx).await?.len() <= 1 {
            return Err(ApiError::Conflict(
                "an account must keep at least one OWNER".into(),
            ));
        }
    }
    Ok(target)
}

/// Removes a member (OWNER only). The last OWNER cannot be removed.
pub async fn remove_member(
    db: &Db,
    viewer: Uuid,
    account_id: Uuid,
    user_id: Uuid,
) -> ApiResult<bool> {
    AccountAccess::require_person(db.conn(), viewer, account_id, Role::Owner).await?;
    let tx = db.write().await?;
    let target = member_for_change(db, &tx.tx, account_id, user_id, true).await?;
    membership::Entity::delete_by_id((account_id, user_id))
        .exec(&tx.tx)
        .await?;
    cancel_invitations_of(&tx.tx, account_id, user_id, None).await?;
    audit::record(
        &tx.tx,
        audit::Entry {
            account_id,
            actor_id: Some(viewer),
            action: audit::action::MEMBER_REMOVED,
            target_type: "member",
            target_id: user_id.to_string(),
            details: Some(serde_json::json!({ "role": role_name(target.role) })),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Changes a member's role (OWNER only), keeping at least one OWNER.
pub async fn change_member_role(
    db: &Db,
    viewer: Uuid,
    account_id: Uuid,
    user_id: Uuid,
    role: Role,
) -> ApiResult<membership::Model> {
    AccountAccess::require_person(db.conn(), viewer, account_id, Role::Owner).await?;
    let tx = db.write().await?;
    let target = member_for_change(db, &tx.tx, account_id, user_id, role != Role::Owner).await?;
    membership::Entity::update(membership::ActiveModel {
        account_id: Set(account_id),
        user_id: Set(user_id),
        role: Set(role),
        ..Default::default()
    })
    .exec(&tx.tx)
    .await?;
    cancel_invitations_of(&tx.tx, account_id, user_id, Some(role)).await?;
    audit::record(
        &tx.tx,
        audit::Entry {
            account_id,
            actor_id: Some(viewer),
            action: audit::action::MEMBER_ROLE_CHANGED,
            target_type: "member",
            target_id: user_id.to_string(),
            details: Some(
                serde_json::json!({ "from": role_name(target.role), "to": role_name(role) }),
            ),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(membership::Model { role, ..target })
}

/// Replaces the viewer's password after checking the current one, and ends every session of
/// theirs (the caller opens a fresh one): a leaked token stops working with the old password.
pub async fn change_password(
    db: &Db,
    passwords: &Passwords,
    sessions: &Sessions,
    viewer: Uuid,
    current: &str,
    new: &str,
) -> ApiResult<()> {
    let new = Password::parse(new)?;
    let user = user::Entity::find_by_id(viewer)
        .one(db.conn())
        .await?
        .ok_or_else(|| {
            ApiError::Unauthenticated("the user of this token no longer exists".into())
        })?;
    if !passwords.verify(current, Some(user.password_hash)).await? {
        return Err(ApiError::bad_input("the current password is not right"));
    }
    let hash = passwords.hash(new).await?;
    let tx = db.write().await?;
    user::Entity::update(user::ActiveModel {
        id: Set(viewer),
        password_hash: Set(hash),
        ..Default::default()
    })
    .exec(&tx.tx)
    .await?;
    sessions.end_all(&tx.tx, viewer).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_lower_cased() {
        assert_eq!(
            Email::parse("  Jo@Example.COM ").map(|e| e.0).ok(),
            Some("jo@example.com".into())
        );
    }

    #[test]
    fn malformed_emails_are_refused() {
        for bad in [
            "",
            "jo",
            "jo@",
            "@example.com",
            "jo@example",
            "jo @example.com",
            "a@b@c.d",
            "jo@example..com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
