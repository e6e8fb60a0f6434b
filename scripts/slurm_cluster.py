"""A throwaway one-node SLURM cluster, with real job accounting, for `make test-slurm` (and CI).

    python scripts/slurm_cluster.py run -- pytest -m slurm   # start, run the command, stop (also on failure)
    python scripts/slurm_cluster.py up --folder /tmp/pilot-slurm    # start; print `export SLURM_CONF=...`
    python scripts/slurm_cluster.py down --folder /tmp/pilot-slurm  # stop what `up` started, by its pid files

Against a real cluster -- SLURM_CONF set, or `sinfo` answers -- nothing is started (`reachable`).

Otherwise, as root on Debian/Ubuntu without systemd: installs `slurm-wlm`, `munge`, `slurmdbd`, its
MySQL plugin and `mariadb-server` if missing (~45 s), writes every file under one folder -- a MariaDB
data directory, `slurmdbd.conf`, a `slurm.conf` whose node line is `slurmd -C`'s -- and starts, each on
its own socket or free port so that nothing of the machine's is touched: munged, mariadbd, slurmdbd,
slurmctld, slurmd. The node is idle about 10 s after the start (most of it the database's first
initialisation). `stop` ends them by the pids they wrote, newest first, SIGKILL after 15 s.

Settings that keep tests fast (slurm/README.md, "Test against a real cluster", explains each):
batch_sched_delay=0 and sched_interval=2 (a job starts ~0.5 s after sbatch), cred_expire=5 (a
requeued job restarts after ~10 s instead of ~150 s), KillWait=5, MinJobAge=3600 (finished jobs stay in
`squeue --states=all`), OverSubscribe=FORCE:4 (two sweeps' tasks run at once on two cores).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = ["slurm-wlm", "munge", "slurmdbd", "slurm-wlm-mysql-plugin", "mariadb-server"]
BINARIES = ["slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "mariadb-install-db", "sbatch"]
PARTITION = "ci"
DB_PASSWORD = "throwaway"  # a database on 127.0.0.1 that lives as long as the test run
# Started in this order, stopped in the reverse one.
DAEMONS = ["munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd"]


class ClusterError(RuntimeError):
    pass


def reachable() -> str | None:
    """Why a real cluster is there (a sentence), or None: SLURM_CONF is set, or `sinfo` answers."""
    if os.environ.get("SLURM_CONF"):
        return f"SLURM_CONF={os.environ['SLURM_CONF']}"
    if shutil.which("sinfo"):
        try:
            done = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:
            return None
        if done.returncode == 0 and done.stdout.strip():
            return "sinfo answers (partitions " + " ".join(done.stdout.split()) + ")"
    return None


def install() -> None:
    """apt-get the packages when a binary is missing (root only: a CI runner, a throwaway VM)."""
    missing = [b for b in BINARIES if not shutil.which(b, path=os.environ["PATH"] + ":/usr/sbin:/usr/bin")]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ClusterError(f"{', '.join(missing)} not installed and this is not root on Debian/Ubuntu: "
                           f"install {' '.join(PACKAGES)}, or point SLURM_CONF at a real cluster")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *PACKAGES]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            raise ClusterError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_line(host: str) -> str:
    """`slurmd -C`'s hardware line (CPUs, sockets, cores, memory), addressed on the loopback."""
    hw = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    fields = [f for f in hw.split() if not f.startswith("NodeName=")]
    return f"NodeName={host} NodeAddr=127.0.0.1 {' '.join(fields)} State=UNKNOWN"


def write_configs(root: Path, ports: dict) -> Path:
    host = socket.gethostname().split(".")[0]  # slurmd finds its node by `hostname -s`
    auth = f"AuthInfo=socket={root / 'munge' / 'munge.socket'},cred_expire=5"
    (root / "slurmdbd.conf").write_text("\n".join([
        "AuthType=auth/munge", auth.replace(",cred_expire=5", ""), "DbdHost=localhost", "DbdAddr=127.0.0.1",
        f"DbdPort={ports['dbd']}", "SlurmUser=root", f"PidFile={root / 'slurmdbd.pid'}",
        f"LogFile={root / 'log' / 'slurmdbd.log'}", "StorageType=accounting_storage/mysql",
        "StorageHost=127.0.0.1", f"StoragePort={ports['db']}", "StorageUser=slurm", f"StoragePass={DB_PASSWORD}",
        "StorageLoc=slurm_acct_db", ""]))
    (root / "slurmdbd.conf").chmod(0o600)  # slurmdbd refuses a readable file holding a password
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=pilotci", f"SlurmctldHost={host}(127.0.0.1)", f"SlurmctldPort={ports['ctld']}",
        f"SlurmdPort={ports['slurmd']}", "SlurmUser=root", "AuthType=auth/munge", auth,
        f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool' / '%n'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "SwitchType=switch/none", "MpiDefault=none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core", "ReturnToService=2", "MailProg=/bin/true",
        "SchedulerParameters=batch_sched_delay=0,sched_interval=2", "KillWait=5", "MinJobAge=3600",
        "AccountingStorageType=accounting_storage/slurmdbd", "AccountingStorageHost=127.0.0.1",
        f"AccountingStoragePort={ports['dbd']}",
        f"AccountingStoragePass={root / 'munge' / 'munge.socket'}",  # the munge socket slurmdbd is reached through
        "AccountingStoreFlags=job_comment",
        node_line(host),
        f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4", ""]))
    (root / "spool" / host).mkdir(parents=True, exist_ok=True)
    return conf


def _wait(what: str, ok, timeout_s: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise ClusterError(f"{what} did not come up in {timeout_s:.0f} s\n{tail}")


def _quiet(cmd: list[str], **kwargs) -> bool:
    return subprocess.run(cmd, capture_output=True, **kwargs).returncode == 0


def _start(cmd: list[str], root: Path, env: dict | None = None) -> None:
    log = root / "log" / "starts.log"
    with log.open("a") as out:
        if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=60, env=env).returncode:
            raise ClusterError(f"{' '.join(cmd)} failed:\n{log.read_text()[-2000:]}")


def start(root: Path) -> dict:
    """Start the daemons under `root`; return the environment clients need ({"SLURM_CONF": ...})."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # munged runs as the munge user and must reach its folder
    for sub in ("log", "state", "munge", "db"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ports = {"ctld": free_port(), "slurmd": free_port(), "dbd": free_port(), "db": free_port()}
    conf = write_configs(root, ports)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        _start_all(root, ports, env)
    except BaseException:
        stop(root)
        raise
    return {"SLURM_CONF": str(conf)}


def _start_all(root: Path, ports: dict, env: dict) -> None:
    sock = root / "munge" / "munge.socket"
    shutil.chown(root / "munge", "munge", "munge")
    _start(["runuser", "-u", "munge", "--", "munged", f"--socket={sock}", f"--pid-file={root / 'munge' / 'munged.pid'}",
            f"--log-file={root / 'munge' / 'munged.log'}", f"--seed-file={root / 'munge' / 'seed'}"], root)
    _wait("munged", lambda: _quiet(["sh", "-c", f"munge -S {sock} -n | unmunge -S {sock}"]), 20)

    db = root / "db"
    _start(["mariadb-install-db", f"--datadir={db / 'data'}", "--user=root", "--skip-test-db",
            "--auth-root-authentication-method=normal"], root)
    daemon = subprocess.Popen(  # mariadbd does not daemonise itself: detach it from our session
        ["mariadbd", f"--datadir={db / 'data'}", "--user=root", f"--socket={db / 'sock'}", f"--port={ports['db']}",
         "--bind-address=127.0.0.1", f"--pid-file={db / 'mariadbd.pid'}", f"--log-error={root / 'log' / 'mariadb.log'}",
         "--skip-log-bin", "--innodb-buffer-pool-size=32M"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    (root / "mariadbd.pid").write_text(f"{daemon.pid}\n")
    client = ["mariadb", f"--socket={db / 'sock'}", "-u", "root"]
    _wait("mariadbd", lambda: _quiet([*client, "-e", "select 1"]), 60, root / "log" / "mariadb.log")
    grant = (f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{DB_PASSWORD}'; "
             "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';")
    subprocess.run([*client, "-e", grant], check=True, capture_output=True)

    _start(["slurmdbd"], root, env)  # reads slurmdbd.conf next to SLURM_CONF
    _wait("slurmdbd", lambda: _quiet(["sacctmgr", "-n", "list", "cluster"], env=env), 60, root / "log" / "slurmdbd.log")
    # slurmctld registers its cluster itself; adding it first lets its first jobs be recorded at once.
    subprocess.run(["sacctmgr", "-i", "add", "cluster", "pilotci"], env=env, capture_output=True)
    _start(["slurmctld", "-f", env["SLURM_CONF"]], root)
    _start(["slurmd", "-f", env["SLURM_CONF"]], root)
    idle = lambda: subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True,  # noqa: E731
                                  text=True).stdout.strip() in ("idle", "idle*") and _quiet(["sinfo", "-h"], env=env)
    _wait("the node (sinfo idle)", idle, 60, root / "log" / "slurmctld.log")


def _pid_file(root: Path, daemon: str) -> Path:
    return {"munged": root / "munge" / "munged.pid"}.get(daemon, root / f"{daemon}.pid")


def _alive(pid: int) -> bool:
    """Running, and not a zombie (without an init as PID 1 an exited daemon may stay unreaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stop(root: Path) -> list[str]:
    """Stop every daemon `start` started under `root`, by its pid file, newest first; return what was stopped."""
    stopped = []
    for daemon in reversed(DAEMONS):
        path = _pid_file(Path(root), daemon)
        try:
            pid = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if not _alive(pid):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):  # mariadbd is our child: reap it
            os.waitpid(pid, os.WNOHANG)
        stopped.append(f"{daemon} ({pid})")
    return stopped


@contextlib.contextmanager
def cluster(root: Path | None = None):
    """The cluster to test against: the reachable one (nothing started), or a throwaway one started
    under `root` (a temporary folder) and stopped when the block ends, however it ends. Yields
    (the environment clients need, a sentence saying which cluster it is)."""
    found = reachable()
    if found:
        yield {}, f"the cluster already there ({found}); nothing started"
        return
    # Not under a private folder (pytest's tmp_path is 0700): munged runs as the munge user.
    temporary = root is None
    root = Path(root or tempfile.mkdtemp(prefix="pilot-slurm-"))
    install()
    started = time.monotonic()
    env = start(root)
    try:
        yield env, f"a throwaway one-node cluster under {root}, up in {time.monotonic() - started:.1f} s"
    finally:
        print("\nslurm: stopped " + ", ".join(stop(root)), flush=True)
        if temporary:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down", "run"])
    parser.add_argument("--folder", help="where the cluster's files live (required by up and down; run: a new "
                        "temporary folder by default)")
    command = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.action in ("up", "down") and not args.folder:
        parser.error(f"{args.action} needs --folder")
    if args.action == "down":
        print("stopped: " + (", ".join(stop(Path(args.folder))) or "nothing was running"))
        return 0
    found = reachable()
    if args.action == "run":
        if not command:
            parser.error("run needs a command after --")
        # A SIGTERM (CI cancelling the job) must stop the daemons too: turn it into an exception here.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        with cluster(Path(args.folder) if args.folder else None) as (env, which):
            print(f"slurm: {which}", flush=True)
            return subprocess.call(command, env={**os.environ, **env})
    if found:
        print(f"# a cluster is already reachable ({found}); starting nothing")
        return 0
    install()
    env = start(Path(args.folder))
    print(f"export SLURM_CONF={env['SLURM_CONF']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
