"""Settings: `BLIXARD_*` environment variables, overridden by `blixard serve` flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MAX_STATE_BYTES = 256 * 1024 * 1024
#: The embedded store's file inside a data directory (the one place it is named).
DB_FILE_NAME = "blixard.db"


def database_path(data_dir: Path) -> Path:
    """Where `blixard serve --data-dir DIR` keeps its embedded store."""
    return Path(data_dir) / DB_FILE_NAME


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BLIXARD_", extra="ignore")

    listen: str = Field("127.0.0.1:8080", description="HOST:PORT to listen on.")
    data_dir: Path = Field(Path("./data"), description="Directory for the embedded store.")
    storage_url: str | None = Field(
        None, description="Storage URL; default sqlite:///<data_dir>/blixard.db."
    )
    max_state_bytes: int = Field(
        DEFAULT_MAX_STATE_BYTES, gt=0, description="Largest accepted state body (inclusive)."
    )
    body_timeout_seconds: float = Field(
        60.0, gt=0, description="Longest pause while a request body arrives before 408."
    )
    log_level: str = Field("info", description="debug, info, warning or error.")
    cache_bytes: int = Field(
        256 * 1024 * 1024, ge=0, description="Memory for recently used state bodies."
    )

    # -- security ------------------------------------------------------------------------
    auth: Literal["auto", "required"] = Field(
        "auto", description="auto: on as soon as any API key exists; required: always on."
    )
    admin_key: SecretStr | None = Field(
        None, description="Ensures an admin API key with this secret exists at start."
    )
    insecure: bool = Field(
        False, description="Allow listening beyond loopback with authentication off."
    )
    tls_cert: Path | None = Field(None, description="PEM certificate chain for HTTPS.")
    tls_key: Path | None = Field(None, description="PEM private key for HTTPS.")
    tls_client_ca: Path | None = Field(
        None, description="PEM CA bundle: require client certificates signed by it (mTLS)."
    )
    encryption_key: SecretStr | None = Field(
        None, description="Base64 of 32 random bytes: encrypt everything at rest (AES-256-GCM)."
    )
    encryption_key_file: Path | None = Field(
        None, description="File holding the encryption key (instead of BLIXARD_ENCRYPTION_KEY)."
    )
    encryption_old_keys: SecretStr | None = Field(
        None, description="Comma-separated previous keys, readable until rotation finishes."
    )
    session_secret: SecretStr | None = Field(
        None,
        description="Seals web UI session cookies; set the same value on every node "
        "(default: derived from the encryption key, else generated in the data directory).",
    )
    session_hours: float = Field(
        12.0, gt=0, le=24 * 30, description="How long a web UI sign-in lasts."
    )

    # -- etcd engine (etcd:// and etcds:// storage URLs; the URL's query overrides these) --
    etcd_ca_cert: Path | None = Field(
        None, description="PEM CA bundle that signed the etcd members' certificates (etcds://)."
    )
    etcd_client_cert: Path | None = Field(
        None, description="PEM client certificate presented to etcd (--client-cert-auth)."
    )
    etcd_client_key: Path | None = Field(None, description="PEM private key of that certificate.")
    etcd_user: str | None = Field(None, description="etcd user (etcd authentication).")
    etcd_password: SecretStr | None = Field(None, description="Password of that etcd user.")
    etcd_password_file: Path | None = Field(
        None, description="File holding that password (instead of BLIXARD_ETCD_PASSWORD)."
    )
    etcd_compaction_retention_seconds: float = Field(
        3600, ge=0, description="etcd history kept when compacting; 0: Blixard never compacts."
    )
    etcd_compaction_interval_seconds: float = Field(
        300, gt=0, description="Seconds between etcd compaction rounds."
    )

    # -- runs (server-side plan and apply) ----------------------------------------------
    tofu_bin: str | None = Field(
        None, description="OpenTofu/Terraform binary for runs (default: tofu, terraform, embedded)."
    )
    plan_roots: str | None = Field(
        None,
        description="Directories (separated by ':' or ',') that config_dir may point into.",
    )
    run_workers: int = Field(2, ge=1, le=64, description="Runs executing at the same time.")
    max_archive_bytes: int = Field(
        32 * 1024 * 1024, gt=0, description="Largest uploaded configuration archive."
    )
    max_config_bytes: int = Field(
        256 * 1024 * 1024, gt=0, description="Largest expanded configuration."
    )
    run_server_url: str | None = Field(
        None, description="URL runs use to reach this server (default: http://127.0.0.1:PORT)."
    )
    run_ca_file: Path | None = Field(
        None, description="CA bundle runs trust for this server's HTTPS (default: its own cert)."
    )
    cancel_grace_seconds: float = Field(
        10.0, ge=0, description="After SIGINT, how long a cancelled run may take before SIGKILL."
    )
    run_sandbox: Literal["on", "off"] = Field(
        "on", description="on: runs execute in a bubblewrap sandbox; off: unsandboxed (unsafe)."
    )
    run_network: Literal["host", "none"] = Field(
        "host", description="host: runs reach the network; none: only this server's API."
    )
    node_ttl: int = Field(
        10,
        ge=2,
        le=600,
        description="Seconds without a heartbeat after which other nodes take a node's runs over.",
    )

    @property
    def plan_root_paths(self) -> list[Path]:
        if not self.plan_roots:
            return []
        parts = self.plan_roots.replace(",", ":").split(":")
        return [Path(part).resolve() for part in parts if part.strip()]

    @property
    def self_url(self) -> str:
        if self.run_server_url:
            return self.run_server_url.rstrip("/")
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://{host}:{self.port}"

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("listen must be HOST:PORT, e.g. 127.0.0.1:8080")
        return value

    @field_validator("log_level")
    @classmethod
    def _valid_level(cls, value: str) -> str:
        value = value.lower()
        if value not in {"debug", "info", "warning", "error", "critical"}:
            raise ValueError("log_level must be debug, info, warning, error or critical")
        return value

    @property
    def is_loopback(self) -> bool:
        import ipaddress

        host = self.host
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or f"sqlite:///{database_path(self.data_dir)}"

    @classmethod
    def load(cls, overrides: dict[str, Any] | None = None) -> Settings:
        """Environment first, then explicit overrides (CLI flags) that are not None."""
        given = {key: value for key, value in (overrides or {}).items() if value is not None}
        return cls(**given)
