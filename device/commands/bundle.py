"""``bedside bundle``: pack, sign, verify, install, list, roll back and self-test model bundles
(device/updates), and write a bundle for a fleet's engines: a Triton model repository
(device/triton). Each action prints one result line (or a table for ``list``) and exits 0, or prints
one line naming the reason and exits 1."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from device import updates
from device.core.settings import ConfigError, KioskConfig, load_config
from device.machine.facts import usable_cores
from device.updates import mender
from device.triton import repository
from device.triton.graph import GraphError
from device.triton.versions import VersionError
from models.bundle import BundleError, load_bundle


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="the kiosk's TOML settings file (its [updates] section)")
    parser.add_argument("--data-dir", type=Path, help="the kiosk's data dir, as `bedside serve` is given it")


def _live_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the running kiosk to health-check (default: from the config's [server])")
    parser.add_argument("--offline", action="store_true",
                        help="no kiosk is running: commit after the self-test; it loads the bundle at its next start")


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    fmt = argparse.ArgumentDefaultsHelpFormatter
    pack = sub.add_parser("pack", help="archive a bundle folder into FILE.bedside (unsigned)", formatter_class=fmt)
    pack.add_argument("dir", type=Path)
    pack.add_argument("--out", type=Path, required=True)
    sign = sub.add_parser("sign", help="sign an archive with a private key (replaces any signature)", formatter_class=fmt)
    sign.add_argument("file", type=Path)
    sign.add_argument("--key", type=Path, required=True)
    sign.add_argument("--allow-downgrade", action="store_true",
                      help="let this archive replace a newer installed version (the signature covers it)")
    verify = sub.add_parser("verify", help="check an archive as an install would, writing nothing", formatter_class=fmt)
    verify.add_argument("file", type=Path)
    verify.add_argument("--trust", type=Path, help="trusted public keys (default: the config's [updates] trust_dir)")
    _config_arguments(verify)
    install = sub.add_parser("install", help="install an archive into the exam's inactive slot and switch to it",
                             formatter_class=fmt)
    install.add_argument("file", type=Path, nargs="?", help="the archive (or --from-drives)")
    install.add_argument("--from-drives", action="store_true",
                         help="the one .bedside archive on the mounted drives ([media] import_folders)")
    install.add_argument("--no-commit", action="store_true",
                         help="leave it on trial after the health check, for `bundle commit` or `bundle rollback` "
                         "(a kiosk restart before either puts the committed bundle back)")
    _config_arguments(install)
    _live_arguments(install)
    commit = sub.add_parser("commit", help="commit the update on trial (an install with --no-commit)",
                            formatter_class=fmt)
    commit.add_argument("exam", nargs="?", help="the exam id (default: the only one installed)")
    _config_arguments(commit)
    listing = sub.add_parser("list", help="the exams served, their slots, and archives on drives", formatter_class=fmt)
    listing.add_argument("--json", action="store_true")
    _config_arguments(listing)
    back = sub.add_parser("rollback", help="switch an exam back to its previous bundle", formatter_class=fmt)
    back.add_argument("exam", nargs="?", help="the exam id (default: the only one installed)")
    _config_arguments(back)
    _live_arguments(back)
    test = sub.add_parser("selftest", help="self-test the bundle an exam serves, on this device's backend",
                          formatter_class=fmt)
    test.add_argument("exam")
    _config_arguments(test)
    triton = sub.add_parser("triton", help="write a bundle into a Triton model repository (needs the 'fleet' extra)",
                            formatter_class=fmt)
    triton.add_argument("bundle", type=Path, help="the bundle folder")
    triton.add_argument("--out", type=Path, required=True, help="the repository (created, or a version added)")
    triton.add_argument("--target", choices=["cpu", "gpu"], default="cpu",
                        help="cpu: ONNX Runtime instances; gpu: ONNX Runtime with the TensorRT accelerator")
    triton.add_argument("--precision", choices=["fp32", "fp16", "int8"],
                        help="the variant (default: fp32 on cpu; int8, fp16, fp32 on gpu, the first the bundle has)")
    triton.add_argument("--max-batch", type=int, default=16, help="Triton's max_batch_size")
    triton.add_argument("--instances", type=int, default=None,
                        help="model instances (default: one per usable core on cpu, one on gpu)")
    triton.add_argument("--engine-cache", type=Path, help="gpu: where the server keeps TensorRT engines")
    mender = sub.add_parser("mender", help="wrap a signed archive in a Mender Artifact (payload type bedside-bundle)",
                            formatter_class=fmt)
    mender.add_argument("file", type=Path, help="the signed .bedside archive")
    mender.add_argument("--device-type", action="append", required=True,
                        help="a Mender device type that may install it (repeatable)")
    mender.add_argument("--out", type=Path, required=True, help="the .mender file to write")
    mender.add_argument("--artifact-name", help="default: <exam>-<version>")
    module = sub.add_parser("mender-module", help="one state of the Mender update module "
                            "(systemd/mender/bedside-bundle calls this as Mender runs it)", formatter_class=fmt)
    module.add_argument("state", help="the update module state (ArtifactInstall, ArtifactCommit, ...)")
    module.add_argument("tree", type=Path, nargs="?", help="the payload's file tree Mender prepared")
    _config_arguments(module)
    module.add_argument("--url", help="the running kiosk to health-check (default: from the config's [server])")


def _config(args: argparse.Namespace) -> KioskConfig:
    return load_config(args.config).with_overrides(**{"store.data_dir": args.data_dir})


def _health(args: argparse.Namespace, config: KioskConfig) -> updates.HealthCheck | None:
    if args.offline:
        return None
    url = args.url or updates.kiosk_url(config.server.host, config.server.port)
    live = updates.LiveKiosk(url, config.updates.health_requests, config.updates.health_timeout_s)
    if not live.answers():
        raise updates.UpdateError(f"no kiosk answers at {url}: start it (systemctl start bedside), give its --url, "
                                  "or pass --offline to install without the live health check")
    return live


def _live_or_offline(args: argparse.Namespace, config: KioskConfig) -> updates.HealthCheck | None:
    """The running kiosk when one answers, else None: an update service must not fail a deployment
    because the kiosk is between restarts (the bundle is self-tested, and loads at the next start)."""
    url = args.url or updates.kiosk_url(config.server.host, config.server.port)
    live = updates.LiveKiosk(url, config.updates.health_requests, config.updates.health_timeout_s)
    if live.answers():
        return live
    print(f"no kiosk answers at {url}: installing without the live health check; it loads at the next start",
          file=sys.stderr)
    return None


def _progress(step: str, detail: str) -> None:
    if step != "extract":
        print(f"  {step} {detail}", flush=True)


def _archive(args: argparse.Namespace, config: KioskConfig) -> Path:
    if args.file is not None and args.from_drives:
        raise updates.UpdateError("give an archive or --from-drives, not both")
    if args.file is not None:
        return args.file
    if not args.from_drives:
        raise updates.UpdateError("give the archive to install, or --from-drives")
    found = updates.find_archives(config.media.import_folders, config.media.max_depth)
    if len(found) != 1:
        where = ", ".join(map(str, config.media.import_folders))
        names = ", ".join(str(a.path) for a in found)
        raise updates.UpdateError(f"{len(found)} .bedside archives on the drives ({where})"
                                  + (f": {names}; give one of them" if found else ""))
    return found[0].path


def _list(config: KioskConfig, as_json: bool) -> None:
    exams = updates.list_installed(config)
    drives = updates.find_archives(config.media.import_folders, config.media.max_depth)
    if as_json:
        print(json.dumps({"exams": [e.as_json() for e in exams], "drives": [d.as_json() for d in drives]}, indent=2))
        return
    for e in exams:
        print(f"{e.exam_id} {e.version or '-'} ({e.source}) {e.path or ''}")
        for s in e.slots:
            print(f"  slot {s.slot} {s.role:<8} {s.version:<10} key {s.key_id} installed {s.installed_at} from {s.archive}")
    for d in drives:
        print(f"on a drive: {d.path} ({d.bytes / 2**20:.1f} MiB)")


def _act(args: argparse.Namespace) -> str:
    if args.action == "pack":
        contents = updates.pack_bundle(args.dir, args.out)
        m = contents.manifest
        return f"packed {m.id} {m.version} ({len(m.files)} files, {contents.size / 2**20:.1f} MiB) into {args.out}; sign it next"
    if args.action == "sign":
        st = updates.sign_archive(args.file, args.key, args.allow_downgrade)
        return f"signed {st.bundle_id} {st.version}" + (" (downgrade allowed)" if st.allow_downgrade else "") + f": {args.file}"
    if args.action == "mender":
        return mender.write_artifact(args.file, args.device_type, args.out, args.artifact_name).line()
    if args.action == "mender-module" and args.state not in mender.ACTION_STATES:
        return mender.ANSWERS.get(args.state, "")  # a query, or a state with nothing to do: no settings read
    if args.action == "triton":
        bundle = load_bundle(args.bundle)
        instances = args.instances or (usable_cores() if args.target == "cpu" else 1)
        written = repository.write_repository(bundle, args.out, args.target, args.precision, args.max_batch, instances,
                                              args.engine_cache)
        return written.line(bundle.manifest.version)
    config = _config(args)
    if args.action == "verify":
        v = updates.verify(args.file, config.updates, args.trust)
        return (f"{args.file.name}: {v.exam_id} {v.version} signed by trusted key {v.key_id}, every file matches"
                + (" (downgrade allowed)" if v.allow_downgrade else ""))
    if args.action == "install":
        path = _archive(args, config)
        return updates.install(path, config, _health(args, config), _progress, commit=not args.no_commit).line()
    if args.action == "commit":
        return updates.commit(args.exam, config).line()
    if args.action == "mender-module":
        health = _live_or_offline(args, config) if args.state in mender.HEALTH_STATES else None
        return mender.act(args.state, args.tree, config, health)
    if args.action == "rollback":
        return updates.rollback(args.exam, config, _health(args, config), _progress).line()
    if args.action == "selftest":
        result = updates.selftest_active(args.exam, config)
        if not result.ok:
            raise updates.SelfTestFailed(f"{result.exam_id} {result.version} failed its self-test: {result.reason()}")
        return f"{result.exam_id} {result.version}: self-test passed ({len(result.checks)} checks)"
    _list(config, args.json)
    return ""


def run(args: argparse.Namespace) -> int:
    try:
        line = _act(args)
    except (updates.UpdateError, ConfigError, BundleError, repository.RepositoryError, GraphError, VersionError) as exc:
        print(f"bedside bundle {args.action}: {exc}", file=sys.stderr)
        return 1
    if line:
        print(line)
    return 0
