//! Stopping, starting, crashing and commanding a [`RabbitNode`].

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lapin::{Connection, ConnectionProperties};
use nix::sys::signal::Signal;

use super::RabbitNode;
use crate::child::{START_TIMEOUT, kill_child_tree, still_running, stop_child, tail};
use crate::scratch::{OWNER_ENV, owner_token};

impl RabbitNode {
    /// Whether the VM is running (the broker app may be stopped).
    pub fn is_running(&self) -> bool {
        still_running(&self.server)
    }

    /// Stop the whole node gracefully (SIGTERM: the broker stops, then the VM
    /// exits). A no-op when already stopped.
    pub async fn stop(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        let child = self
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(child) = child {
            stop_child(child, Signal::SIGTERM, "rabbitmq-server").await?;
            tracing::info!(node = %self.node, took = ?started.elapsed(), "RabbitNode stopped");
        }
        Ok(())
    }

    /// Boot the node again (same name, ports and data) after
    /// [`RabbitNode::stop`] or [`RabbitNode::kill_hard`]; returns once AMQP
    /// connections succeed.
    pub async fn start_again(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        if self.is_running() {
            bail!("RabbitNode {} is already running", self.node);
        }
        self.spawn()?;
        self.wait_ready().await?;
        tracing::info!(node = %self.node, took = ?started.elapsed(), "RabbitNode started again");
        Ok(())
    }

    /// Full restart (VM included): [`RabbitNode::stop`] then
    /// [`RabbitNode::start_again`]; returns (and logs) how long it took.
    pub async fn restart(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.stop().await?;
        self.start_again().await?;
        let took = started.elapsed();
        tracing::info!(node = %self.node, ?took, "RabbitNode restarted");
        Ok(took)
    }

    /// `rabbitmqctl stop_app`: the broker stops (connections close, the AMQP
    /// port refuses), the VM stays up. Faster to undo than a full stop.
    pub async fn stop_app(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        self.ctl(&["stop_app"]).await?;
        tracing::info!(node = %self.node, took = ?started.elapsed(), "RabbitNode app stopped");
        Ok(())
    }

    /// `rabbitmqctl start_app`; returns once AMQP connections succeed.
    pub async fn start_app(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        self.ctl(&["start_app"]).await?;
        self.wait_ready().await?;
        tracing::info!(node = %self.node, took = ?started.elapsed(), "RabbitNode app started");
        Ok(())
    }

    /// [`RabbitNode::stop_app`] then [`RabbitNode::start_app`]; returns (and
    /// logs) how long it took.
    pub async fn restart_app(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.stop_app().await?;
        self.start_app().await?;
        let took = started.elapsed();
        tracing::info!(node = %self.node, ?took, "RabbitNode app restarted");
        Ok(took)
    }

    /// Crash: SIGKILL the VM (and its helpers) at once. Returns once they are
    /// dead; [`RabbitNode::start_again`] then boots from what is on disk.
    pub fn kill_hard(&self) {
        let child = self
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(child) = child {
            kill_child_tree(child);
            tracing::info!(node = %self.node, "RabbitNode killed (SIGKILL)");
        }
    }

    /// Run `rabbitmqctl -n <node> <args>` with this node's environment
    /// (cookie); returns its stdout, or an error with its stderr.
    pub async fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut command = tokio::process::Command::from(self.command("rabbitmqctl"));
        command
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(120), command.output())
            .await
            .with_context(|| format!("rabbitmqctl {args:?} timed out"))?
            .context("running rabbitmqctl")?;
        if !output.status.success() {
            bail!(
                "rabbitmqctl {args:?} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// A `Command` for RabbitMQ script `name` with this node's environment.
    fn command(&self, name: &str) -> Command {
        let path = &self.dir.path;
        let mut command = Command::new(self.sbin.join(name));
        command
            .current_dir(path)
            .stdin(Stdio::null())
            .env(OWNER_ENV, owner_token())
            .env("HOME", path)
            .env("LANG", "C.UTF-8")
            .env("LC_ALL", "C.UTF-8")
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", path.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", path.join("log"))
            .env("RABBITMQ_PID_FILE", path.join("rabbit.pid"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                path.join("enabled_plugins"),
            )
            .env("RABBITMQ_CONFIG_FILE", path.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                path.join("advanced.config"),
            )
            .env("RABBITMQ_CONF_ENV_FILE", path.join("rabbitmq-env.conf"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env_remove("RABBITMQ_ENABLED_PLUGINS")
            .env_remove("ERL_FLAGS");
        command
    }

    /// Spawn `rabbitmq-server` in the foreground (our child), output to
    /// `stdout.log`. The script forwards SIGTERM to the VM as a graceful stop.
    pub(super) fn spawn(&self) -> anyhow::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path.join("stdout.log"))
            .context("opening stdout.log")?;
        let child = self
            .command("rabbitmq-server")
            .stdout(log.try_clone()?)
            .stderr(log)
            // A group of its own: a terminal's ctrl-c reaches its owner,
            // which stops it in order, not the node behind its back.
            .process_group(0)
            .spawn()
            .context("spawning rabbitmq-server")?;
        *self.server.lock().unwrap_or_else(PoisonError::into_inner) = Some(child);
        Ok(())
    }

    /// Wait until an AMQP connection succeeds (the listener opens at the end
    /// of the boot), and one over TLS too if the node has a TLS listener;
    /// fail early if the VM exits. Cheaper than polling
    /// `rabbitmqctl await_startup`, which fails at once until the node has
    /// registered with epmd and costs ~0.5 s CPU per try.
    pub(super) async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let url = self.amqp_url();
        let mut plain_ready = false;
        let mut tls_error = String::from("not tried");
        loop {
            if !self.is_running() {
                bail!(
                    "RabbitMQ node {} exited while starting; output:\n{}\nlog:\n{}",
                    self.node,
                    tail(&self.dir.path.join("stdout.log"), 20),
                    tail(&self.log_path(), 30)
                );
            }
            let port_open = tokio::net::TcpStream::connect(("127.0.0.1", self.amqp_port))
                .await
                .is_ok();
            if port_open && !plain_ready {
                let connect = Connection::connect(&url, ConnectionProperties::default());
                if let Ok(Ok(connection)) =
                    tokio::time::timeout(Duration::from_secs(5), connect).await
                {
                    let _ = connection.close(200, "ready".into()).await;
                    plain_ready = true;
                }
            }
            if plain_ready {
                if self.tls_port.is_none() {
                    return Ok(());
                }
                match self.connect_tls().await {
                    Ok(connection) => {
                        let _ = connection.close(200, "ready".into()).await;
                        return Ok(());
                    }
                    Err(e) => tls_error = format!("{e:#}"),
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "RabbitMQ node {} not ready after {START_TIMEOUT:?} (plain AMQP ready: \
                     {plain_ready}, TLS: {tls_error}); log:\n{}",
                    self.node,
                    tail(&self.log_path(), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
