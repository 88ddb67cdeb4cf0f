//! The tenant's settings: mode, default policy, webhook URL.

use countersign_domain::tenant::{Settings, SettingsCommand, TenantSettings};

use crate::actions::Written;
use crate::tenant::run;
use crate::{Actor, App, AppError, roles};

/// The settings (owner, admin, auditor), with the webhook URL's credentials redacted.
pub async fn read(app: &App, actor: &Actor) -> Result<Settings, AppError> {
    actor.require(
        &[roles::OWNER, roles::ADMIN, roles::AUDITOR],
        "reading settings",
    )?;
    let (settings, _) = app.ledger.load::<TenantSettings>(&actor.tenant).await?;
    Ok(settings.settings.redacted())
}

/// Changes the settings (owner, admin). A webhook URL's credentials are stored apart from the
/// log (events are immutable and exported to auditors) under the URL's redacted form; a URL sent
/// back as it was shown (redacted) keeps them. Answers the settings redacted.
pub async fn update(
    app: &App,
    actor: &Actor,
    mut settings: Settings,
) -> Result<Written<Settings>, AppError> {
    actor.require(&[roles::OWNER, roles::ADMIN], "changing settings")?;
    if let Some(url) = &settings.webhook_url
        && let Some(credentials) = url.credentials()
    {
        app.ledger
            .put_secret(actor.tenant.as_str(), &url.secret_name(), credentials)
            .await?;
        settings.webhook_url = Some(url.redacted());
    }
    let command = SettingsCommand::UpdateSettings {
        context: actor.tenant_context(),
        settings,
    };
    let committed = run::<TenantSettings>(app, actor, "UpdateSettings", command).await?;
    Ok(Written {
        value: committed.aggregate.settings.redacted(),
        cursor: committed.last_cursor(),
    })
}
