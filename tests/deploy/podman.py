"""Podman for the deployment tests, with nothing taken from a registry.

A storage of the tests' own (kept between runs, so the image's layers are built once), a Debian
base image made with debootstrap from the machine's Debian mirror, ``deploy/Dockerfile`` built on
it, and Compose services and Kubernetes pods run as ``podman run`` on the host's network, as
Compose and the kubelet would run them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
IMAGE = "localhost/qledger:deploy-test"
SUITE = "bookworm"  # Python 3.11, as pyproject.toml asks
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
EXTRA_CAS = Path("/usr/local/share/ca-certificates")
BUILD_TIMEOUT = 3600.0  # the first build downloads every dependency; the CI budget is 90 minutes


def missing_tools() -> list[str]:
    """What this machine lacks to run the deployment tests."""
    missing = [] if shutil.which("podman") else ["podman"]
    if not (shutil.which("runc") or shutil.which("crun")):
        missing.append("runc")
    if not os.environ.get("QLEDGER_TEST_BASE_IMAGE"):
        if not shutil.which("debootstrap"):
            missing.append("debootstrap")
        elif os.geteuid() != 0:
            missing.append("root for debootstrap (or QLEDGER_TEST_BASE_IMAGE, a Debian-based image)")
    return missing


def rootless() -> bool:
    return os.geteuid() != 0


@dataclass(frozen=True)
class Podman:
    root: Path
    runroot: Path
    driver: str
    conf: Path

    @classmethod
    def for_tests(cls) -> Podman:
        """Storage under ~/.cache/qledger-deploy-test (QLEDGER_TEST_PODMAN_ROOT), overlay where the
        kernel has it, else vfs (QLEDGER_TEST_PODMAN_STORAGE); cgroupfs, no default ulimits."""
        filesystems = Path("/proc/filesystems")
        has_overlay = filesystems.exists() and "overlay" in filesystems.read_text()
        driver = os.environ.get("QLEDGER_TEST_PODMAN_STORAGE") or ("overlay" if has_overlay else "vfs")
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qledger-deploy-test"
        root = Path(os.environ.get("QLEDGER_TEST_PODMAN_ROOT") or cache / driver)
        run_base = os.environ.get("XDG_RUNTIME_DIR") or ("/run" if not rootless() else tempfile.gettempdir())
        runroot = Path(run_base) / f"qledger-deploy-test-{os.geteuid()}" / driver
        runroot.mkdir(parents=True, exist_ok=True)
        root.mkdir(parents=True, exist_ok=True)
        conf = runroot / "containers.conf"
        runtime = f'runtime = "{"runc" if shutil.which("runc") else "crun"}"\n'
        conf.write_text("[containers]\ndefault_ulimits = []\n[engine]\ncgroup_manager = \"cgroupfs\"\n"
                        f"events_logger = \"file\"\ntmp_dir = \"{runroot / 'libpod'}\"\n{runtime}")
        return cls(root, runroot, driver, conf)

    def command(self, *args: str) -> list[str]:
        return ["podman", "--root", str(self.root), "--runroot", str(self.runroot),
                "--storage-driver", self.driver, *args]

    def shell_command(self) -> str:
        """``podman`` with this storage, for shell lines that call it."""
        return shlex.join(self.command())

    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.conf)}

    def run(self, *args: str, timeout: float = 120.0, check: bool = True,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run(self.command(*args), env=self.env(), capture_output=True,
                                    timeout=timeout, input=stdin.decode() if stdin is not None else None,
                                    text=True)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"podman {shlex.join(args)}: no answer in {timeout:.0f} s") from exc
        if check and result.returncode != 0:
            raise AssertionError(f"podman {shlex.join(args)}: exit {result.returncode}\n"
                                 f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return result

    def chown(self, owner: str, *paths: Path) -> None:
        """``chown -R OWNER`` with OWNER a uid:gid inside the containers."""
        argv = ["chown", "-R", owner, *map(str, paths)]
        if rootless():
            subprocess.run(self.command("unshare", *argv), env=self.env(), check=True, timeout=60)
        else:
            subprocess.run(argv, check=True, timeout=60)

    def read_as_admin(self, path: Path) -> bytes:
        """A file the containers' uid 999 owns (``sudo cat``; rootless, ``podman unshare cat``)."""
        if not rootless():
            return path.read_bytes()
        return subprocess.run(self.command("unshare", "cat", str(path)), env=self.env(), check=True,
                              capture_output=True, timeout=60).stdout

    def remove_containers(self, prefix: str) -> None:
        names = self.run("ps", "-a", "--format", "{{.Names}}", check=False).stdout.split()
        doomed = [name for name in names if name.startswith(prefix)]
        if doomed:
            self.run("rm", "-f", "-t", "2", *doomed, check=False, timeout=120)


def debian_mirror() -> str:
    """The machine's own Debian mirror (its apt sources), else deb.debian.org."""
    given = os.environ.get("QLEDGER_TEST_DEBIAN_MIRROR")
    if given:
        return given
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.sources")),
               *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    for path in sources:
        text = path.read_text(errors="replace") if path.is_file() else ""
        for match in re.finditer(r"^\s*(?:URIs:|deb(?:\s+\[[^\]]*\])?)\s+(http\S+)", text, re.M):
            if "security" not in match.group(1):
                return match.group(1).rstrip("/")
    return "http://deb.debian.org/debian"


def base_image(podman: Podman) -> str:
    """A Debian bookworm image with Python 3.11 and venv, made with debootstrap (no registry),
    trusting the CAs this machine adds to Debian's (a TLS-inspecting proxy's, say), so pip in the
    build reaches the package index as the host does.  Named by a digest of its recipe and reused."""
    given = os.environ.get("QLEDGER_TEST_BASE_IMAGE")
    if given:
        return given
    mirror = debian_mirror()
    cas = sorted(p for p in EXTRA_CAS.rglob("*.crt") if p.is_file()) if EXTRA_CAS.is_dir() else []
    recipe = hashlib.sha256(json.dumps([SUITE, BASE_PACKAGES, mirror]).encode())
    for ca in cas:
        recipe.update(ca.read_bytes())
    tag = f"localhost/qledger-base:{SUITE}-{recipe.hexdigest()[:12]}"
    if podman.run("image", "exists", tag, check=False).returncode == 0:
        return tag
    with tempfile.TemporaryDirectory(prefix="qledger-base-") as scratch:
        rootfs = Path(scratch) / "rootfs"
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE,
                        str(rootfs), mirror], check=True, capture_output=True, timeout=1800)
        if cas:
            for ca in cas:
                shutil.copy(ca, rootfs / "usr/local/share/ca-certificates" / ca.name)
            subprocess.run(["chroot", str(rootfs), "update-ca-certificates"], check=True,
                           capture_output=True, timeout=300)
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / cache).glob("*"):
                if entry.is_file():
                    entry.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            subprocess.run(podman.command("import", "-", tag), env=podman.env(), stdin=tar.stdout,
                           check=True, capture_output=True, timeout=600)
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar.wait(timeout=60)
    return tag


def pip_index() -> str | None:
    """The package index this machine's pip is told to use, when it is one a container can reach."""
    index = os.environ.get("PIP_INDEX_URL")
    if not index:
        asked = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                               capture_output=True, text=True, timeout=60)
        index = asked.stdout.strip() if asked.returncode == 0 else ""
    return index if index.startswith(("http://", "https://")) else None


def build_image(podman: Podman, base: str) -> str:
    """``deploy/Dockerfile`` on BASE; Podman's layer cache makes a build with nothing changed a
    matter of seconds."""
    args = ["build", "--network", "host", "--ignorefile", str(DEPLOY / "Dockerfile.dockerignore"),
            "--build-arg", f"BASE={base}", "-f", str(DEPLOY / "Dockerfile"), "-t", IMAGE]
    index = pip_index()
    if index:
        args += ["--build-arg", f"PIP_INDEX_URL={index}"]
    podman.run(*args, str(REPO), timeout=BUILD_TIMEOUT)
    podman.run("image", "prune", "-f", check=False)  # the layers an earlier build no longer uses
    return IMAGE


def compose_run_args(service: dict[str, Any], compose: dict[str, Any], project: Path) -> list[str]:
    """``podman run`` options for a Compose service: its environment, secrets (bind mounts of
    their files, at /run/secrets/NAME or their absolute target) and bind-mounted volumes, with
    paths relative to PROJECT as Compose takes them relative to the compose file."""
    args: list[str] = []
    for name, value in (service.get("environment") or {}).items():
        args += ["-e", f"{name}={value}"]
    for secret in service.get("secrets") or []:
        if isinstance(secret, str):
            source, target = secret, None
        else:
            source, target = secret["source"], secret.get("target")
        target = target if target and target.startswith("/") else f"/run/secrets/{target or source}"
        args += ["-v", f"{(project / compose['secrets'][source]['file']).resolve()}:{target}:ro"]
    for volume in service.get("volumes") or []:
        host, container, *mode = volume.split(":")
        assert host.startswith("."), f"only bind mounts are translated: {volume}"
        args += ["-v", ":".join([str((project / host).resolve()), container, *mode])]
    return args


def pod_user_args(pod: dict[str, Any]) -> list[str]:
    """The pod's securityContext as ``podman run`` options: its user, group and fsGroup."""
    context = pod["securityContext"]
    user = context["runAsUser"]
    return ["--user", f"{user}:{context.get('runAsGroup', user)}", "--group-add", str(context["fsGroup"])]


def lay_out_pod_volumes(podman: Podman, pod: dict[str, Any], secrets: dict[str, dict[str, bytes]],
                        where: Path) -> dict[str, Path]:
    """Each volume of POD as the kubelet lays it out with ``fsGroup``: a Secret's files root's,
    of group fsGroup, mode defaultMode plus group read; an emptyDir root's, of group fsGroup,
    setgid and writable by all."""
    group = pod["securityContext"]["fsGroup"]
    paths: dict[str, Path] = {}
    for volume in pod["volumes"]:
        path = where / volume["name"]
        path.mkdir(parents=True)
        if "secret" in volume:
            mode = volume["secret"].get("defaultMode", 0o644) | 0o440
            for name, data in secrets[volume["secret"]["secretName"]].items():
                (path / name).write_bytes(data)
                (path / name).chmod(mode)
            path.chmod(0o755)
        else:
            assert "emptyDir" in volume, volume
            path.chmod(0o2777)
        podman.chown(f"0:{group}", path)
        paths[volume["name"]] = path
    return paths


def pod_container_args(pod: dict[str, Any], container: dict[str, Any], volumes: dict[str, Path],
                       configmaps: dict[str, dict[str, str]]) -> tuple[list[str], dict[str, str]]:
    """``podman run`` options for a container of POD (user, mounts, entry point) and its
    environment (envFrom ConfigMaps, then env)."""
    args = pod_user_args(pod)
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        env.update(configmaps[source["configMapRef"]["name"]])
    env.update({item["name"]: item["value"] for item in container.get("env") or []})
    for mount in container.get("volumeMounts") or []:
        read_only = ":ro" if mount.get("readOnly") else ""
        args += ["-v", f"{volumes[mount['name']]}:{mount['mountPath']}{read_only}"]
    if "command" in container:
        args += ["--entrypoint", json.dumps(container["command"])]
    return args, env
