//! Tenancy settings of `idem run` (`IDEM_SCOPE_AUTH`, `IDEM_SCOPE_ALLOW`,
//! `IDEM_REPLY_TO_ALLOW`): whose messages may write into which scope, and
//! where their results may be replied to, validated into the consumer's
//! [`Admission`] (`docs/contracts.md#tenants`).

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use idem_inbox::admission::Admission;
use idem_message::{AllowList, DEFAULT_REPLY_TO_ALLOW, ReplyToAllow, ScopeAuth};

/// How a message's scope (the dedup key's first half, the charge's
/// `metadata.source`) is authenticated.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeMode {
    /// The scope is the producer's `app_id`, unchecked: any producer can
    /// write into any scope. Unsafe on a vhost shared by tenants.
    Open,
    /// The scope is the broker-validated `user_id` property; a message without
    /// one, or whose `app_id` names another scope, is quarantined.
    #[value(name = "user_id")]
    UserId,
    /// The scope is `app_id` (or `default`), and must be listed for the
    /// message's broker-validated `user_id` in IDEM_SCOPE_ALLOW.
    #[value(name = "allow_list")]
    AllowList,
}

/// The tenancy settings of `idem run`.
#[derive(Args, Debug, Clone)]
pub struct TenantArgs {
    /// How a message's scope is authenticated: `open` (app_id, unchecked;
    /// unsafe when tenants share the vhost), `user_id` (the broker-validated
    /// user_id property is the scope), or `allow_list` (app_id, if listed for
    /// the user_id in IDEM_SCOPE_ALLOW). Refused messages are quarantined as
    /// `scope_not_allowed`, never charged.
    #[arg(long, env = "IDEM_SCOPE_AUTH", value_enum, default_value_t = ScopeMode::Open)]
    pub scope_auth: ScopeMode,
    /// With IDEM_SCOPE_AUTH=allow_list: the scopes each broker user may write
    /// into, `user=scope[,scope...][;user=...]`, e.g.
    /// `alice=shop-a,shop-b;bob=shop-c`; `user=*` allows every scope.
    #[arg(long, env = "IDEM_SCOPE_ALLOW")]
    pub scope_allow: Option<String>,
    /// Queues a result may be replied to (`reply_to`): comma-separated
    /// patterns, `*` any run of characters, `{scope}` the message's scope;
    /// `none`; or `any` (every queue, idem's own included: the behaviour
    /// before this setting). Under patterns idem's own work queue and
    /// `<queue>.*` are always refused. A refused reply_to is still charged and
    /// its result published to the results exchange, only not replied.
    #[arg(long, env = "IDEM_REPLY_TO_ALLOW", default_value = DEFAULT_REPLY_TO_ALLOW)]
    pub reply_to_allow: String,
}

impl TenantArgs {
    /// The consumer's admission rules: these settings, the body limit
    /// `max_body` and the work queue `queue` (never a reply target).
    pub fn validate(&self, max_body: usize, queue: &str) -> anyhow::Result<Admission> {
        let scope = match (self.scope_auth, self.scope_allow.as_deref()) {
            (ScopeMode::AllowList, Some(list)) => {
                let list: AllowList = list.parse().context(
                    "IDEM_SCOPE_ALLOW (--scope-allow) does not parse; fix the entry it names",
                )?;
                ScopeAuth::AllowList(list)
            }
            (ScopeMode::AllowList, None) => bail!(
                "IDEM_SCOPE_AUTH=allow_list needs IDEM_SCOPE_ALLOW: the scopes each broker user \
                 may write into, e.g. alice=shop-a,shop-b;bob=shop-c"
            ),
            (mode, Some(_)) => bail!(
                "IDEM_SCOPE_ALLOW is set but IDEM_SCOPE_AUTH={} does not read it: set \
                 IDEM_SCOPE_AUTH=allow_list to enforce the list, or unset IDEM_SCOPE_ALLOW",
                mode.to_possible_value()
                    .map_or_else(String::new, |v| v.get_name().to_owned())
            ),
            (ScopeMode::Open, None) => ScopeAuth::Open,
            (ScopeMode::UserId, None) => ScopeAuth::UserId,
        };
        let reply_to: ReplyToAllow = self
            .reply_to_allow
            .parse()
            .context("IDEM_REPLY_TO_ALLOW (--reply-to-allow) does not parse")?;
        Ok(Admission::new(max_body, scope, reply_to, queue))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        tenants: TenantArgs,
    }

    fn validate(args: &[&str]) -> anyhow::Result<Admission> {
        let mut all = vec!["idem"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)
            .expect("parses")
            .tenants
            .validate(1024, "idem.charges")
    }

    #[test]
    fn defaults_are_open_scopes_and_the_scopes_own_reply_queues() {
        let a = validate(&[]).expect("defaults");
        assert_eq!(a.scope_auth(), &ScopeAuth::Open);
        assert_eq!(a.reply_to_allow(), &ReplyToAllow::default());
        assert_eq!(a.max_body(), 1024);
        let user = validate(&["--scope-auth", "user_id", "--reply-to-allow", "any"]).unwrap();
        assert_eq!(user.scope_auth(), &ScopeAuth::UserId);
        assert_eq!(user.reply_to_allow(), &ReplyToAllow::Any);
        let listed = validate(&["--scope-auth", "allow_list", "--scope-allow", "a=x"]).unwrap();
        assert!(matches!(listed.scope_auth(), ScopeAuth::AllowList(_)));
    }

    /// Each mistake is refused at start with the variable to fix.
    #[test]
    fn bad_settings_name_what_to_fix() {
        let cases: [(&[&str], &str); 5] = [
            (&["--scope-auth", "allow_list"], "needs IDEM_SCOPE_ALLOW"),
            (
                &["--scope-allow", "a=x"],
                "IDEM_SCOPE_AUTH=open does not read it",
            ),
            (
                &["--scope-auth", "user_id", "--scope-allow", "a=x"],
                "IDEM_SCOPE_AUTH=user_id does not read it",
            ),
            (
                &["--scope-auth", "allow_list", "--scope-allow", "alice"],
                "entry 1 (\"alice\") has no '='",
            ),
            (
                &["--reply-to-allow", "{tenant}.*"],
                "placeholder is {scope}",
            ),
        ];
        for (args, says) in cases {
            let err = format!("{:#}", validate(args).expect_err(says));
            assert!(err.contains(says), "{args:?}: {err}");
            assert!(err.contains("IDEM_"), "{args:?} names the variable: {err}");
        }
    }
}
