"""A real systemd booted as PID 1 of private namespaces, for testing the units under it.

The machine's root is the lower layer of an overlay whose upper layer is a private tmpfs, and
/run and /tmp are fresh tmpfs mounts, so nothing the booted systemd (or the daemon under it)
writes reaches the real filesystem. A private cgroup2 subtree keeps its cgroups apart from the
host's and from other boxes. It boots straight into a target of ours, never sysinit.target.

The checkout is bound at /opt/trainer-source and a directory of the test's at /srv/share.
Talk to it with ``box.run(...)`` (nsenter into its mount and pid namespaces); read its files
through ``box.path(...)`` (/proc/PID/root). ``box.close()`` kills it by pid and removes the
cgroup subtree.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

CGROUP2 = Path("/sys/fs/cgroup/unified")
SYSTEMD = Path("/usr/lib/systemd/systemd")
TARGET = "trainer-test.target"

# Runs as PID 1 of the new pid namespace, in a private mount namespace; ends by exec'ing systemd.
BOOT_SCRIPT = r"""
set -euo pipefail
scratch=$1 share=$2 source=$3
mount -t tmpfs -o mode=0755 tmpfs "$scratch"
mkdir "$scratch/upper" "$scratch/work" "$scratch/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$scratch/upper,workdir=$scratch/work" "$scratch/root"
r=$scratch/root
mount -t proc proc "$r/proc"
mount --bind /proc/sys "$r/proc/sys"
mount -o remount,bind,ro "$r/proc/sys"
mount -t sysfs -o ro sysfs "$r/sys"
mount -t cgroup2 cgroup2 "$r/sys/fs/cgroup"
mount --rbind /dev "$r/dev"
mount -t tmpfs -o mode=0755 tmpfs "$r/run"
mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
mkdir -p "$r/srv/share" "$r/opt/trainer-source"
mount --bind "$share" "$r/srv/share"
# The checkout under test, at a path the service can see wherever the checkout is (under
# /tmp, the service's PrivateTmp would hide it).
mount --bind "$source" "$r/opt/trainer-source"
# Our target, and nothing else: sysinit.target would run tmpfiles and friends.
cat > "$r/etc/systemd/system/trainer-test.target" <<EOF
[Unit]
Description=trainer tests
Wants=systemd-journald.service
EOF
rm -f "$r/etc/machine-id"
cd "$r"
mkdir -p oldroot
pivot_root . oldroot
umount -l /oldroot
exec env container=trainer-test /usr/lib/systemd/systemd --unit=trainer-test.target
"""


def unavailable() -> str | None:
    """Why a box cannot be booted here (None: it can)."""
    if os.geteuid() != 0:
        return "booting systemd in namespaces needs root"
    for tool in ("unshare", "nsenter", "systemctl", "journalctl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not SYSTEMD.exists():
        return f"{SYSTEMD} is not installed"
    if not (CGROUP2 / "cgroup.procs").exists():
        return f"no cgroup2 hierarchy at {CGROUP2}"
    return None


class SystemdBox:
    def __init__(self, share: Path, source: Path) -> None:
        self.share = share  # a host directory, seen inside as /srv/share
        self.source = source  # the checkout, seen inside as /opt/trainer-source
        self.name = f"trainer-test-{os.getpid()}-{os.urandom(3).hex()}"
        self.cgroup = CGROUP2 / self.name
        # On the root filesystem, not under /dev: the box rbinds /dev, and would see its own
        # root mounted under it again.
        self.scratch = Path(tempfile.gettempdir()) / self.name
        self.launcher: subprocess.Popen | None = None
        self.pid: int | None = None  # the booted systemd, as the host sees it

    # --- life -----------------------------------------------------------------------------

    def boot(self, timeout: float = 60) -> None:
        self.cgroup.mkdir()
        self.scratch.mkdir()
        script = self.share / ".boot.sh"
        script.write_text(BOOT_SCRIPT)
        # The launcher moves itself into the private cgroup before unsharing, so the booted
        # systemd's cgroup namespace is rooted there.
        self.launcher = subprocess.Popen(
            ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec unshare --cgroup --pid --fork --mount --uts '
                         '--propagation private bash "$1" "$2" "$3" "$4"',
             str(self.cgroup), str(script), str(self.scratch), str(self.share), str(self.source)],
            stdout=open(self.share / ".boot.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pid = self.pid or self._namespace_init()
            if self.pid and self.run("systemctl", "is-system-running", check=False).stdout.strip() in (
                    "running", "degraded"):
                return
            if self.launcher.poll() is not None:
                raise RuntimeError(f"the box died while booting: {(self.share / '.boot.log').read_text()[-2000:]}")
            time.sleep(0.2)
        raise RuntimeError("systemd in the box did not reach a steady state in time")

    def _namespace_init(self) -> int | None:
        try:
            children = Path(f"/proc/{self.launcher.pid}/task/{self.launcher.pid}/children").read_text().split()
        except OSError:
            return None
        for child in children:  # unshare --fork's child, once it has exec'd systemd
            try:
                if os.readlink(f"/proc/{child}/exe").endswith("/systemd"):
                    return int(child)
            except OSError:
                pass
        return None

    def close(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)  # PID 1 of the namespace: everything in it dies
            except ProcessLookupError:
                pass
        if self.launcher is not None:
            try:
                self.launcher.wait(30)
            except subprocess.TimeoutExpired:
                self.launcher.kill()
                self.launcher.wait(10)
        self._remove_cgroups(self.cgroup)
        try:
            self.scratch.rmdir()
        except OSError:
            pass

    def _remove_cgroups(self, group: Path) -> None:
        if not group.exists():
            return
        for child in group.iterdir():
            if child.is_dir():
                self._remove_cgroups(child)
        for _ in range(50):  # the kernel frees a cgroup shortly after its last process exits
            try:
                group.rmdir()
                return
            except OSError:
                time.sleep(0.1)

    # --- talking to it ---------------------------------------------------------------------

    def run(self, *argv: str, check: bool = True, timeout: float = 120, env: dict | None = None,
            user: str | None = None) -> subprocess.CompletedProcess:
        """Run a command inside the box (as root, or as ``user`` with that user's groups)."""
        prefix = ["nsenter", "-t", str(self.pid), "-m", "-p", "--"]
        if user is not None:
            prefix += ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]
        result = subprocess.run([*prefix, "env", *[f"{k}={v}" for k, v in (env or {}).items()], *argv],
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("systemctl", "--no-pager", *args, check=check)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *[f"--property={p}" for p in props]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str, *args: str) -> list[dict]:
        import orjson

        out = self.run("journalctl", "--no-pager", "-u", unit, "-o", "json", *args).stdout
        return [orjson.loads(line) for line in out.splitlines() if line.strip()]

    def path(self, inside: str) -> Path:
        """A path inside the box, as the host can read (and write) it."""
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def wait_for(self, predicate, timeout: float = 90, what: str = "condition", interval: float = 0.2,
                 unit: str = "trainer.service"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        journal = self.run("journalctl", "--no-pager", "-u", unit, "-n", "40", check=False).stdout
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; the journal of {unit}:\n{journal}")
