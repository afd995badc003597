"""``cdp predict``: full density grids (or densities at given points) for new structures, written atomically.

Molecules (pbc all false) get the data recipe's box, extent + 3 Å vacuum on each side, with
n_i = ceil(L_i / spacing) points; crystals their own cell. ``--grid-like`` takes grid and PAW augmentation
occupancies from a reference CHGCAR instead. Output by suffix: ``.CHGCAR`` (with the magnetisation block
for spin models), ``.cube``, or ``.npy`` ((nx, ny, nz) or (nx, ny, nz, 2), JSON sidecar ``<file>.json``
with cell, origin, pbc). Several structures or a directory make OUT a directory, one file per structure.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import List, Optional, Tuple

from ase.io import read as ase_read
from ase.io.formats import UnknownFileTypeError
import click
import numpy as np
from tqdm import tqdm

from cdp.core.atomic import atomic_write_bytes
from cdp.core.types import CdpError, DensityGrid
from cdp.core.validate import check_overlap, validate_atoms, validate_probes
from cdp.distributed import GridJob, run_grids, session, torchrun_entry
from cdp.io import detect_format, read
from cdp.io.augmentation import grouped_by_species, match_atoms, reorder_augmentation
from cdp.io.compression import split_compression
from cdp.predict import DEFAULT_PROBE_BATCH, check_elements, check_memory, grid_shape_for, load_model, molecule_box, resolve_device

VACUUM = 3.0
DEFAULT_SPACING = 0.1
SUFFIX = {"chgcar": ".CHGCAR", "cube": ".cube", "npy": ".npy"}


# -- inputs --------------------------------------------------------------------------------------------


def _is_density_name(name: str) -> bool:
    try:
        detect_format(name)
        return True
    except CdpError:
        return False


def structure_name(path: Path) -> str:
    """File stem without compression and density/structure suffixes (``x.CHGCAR.gz`` → ``x``)."""
    base = split_compression(path.name)[0]
    stem, dot, ext = base.rpartition(".")
    return stem if dot and stem else base


def read_structure(path: Path):
    """ase.Atoms from a density file (CHGCAR/cube, pbc from its sidecar) or any format ase reads (.traj, .xyz, ...)."""
    if not path.is_file():
        raise CdpError(f"{path}: no such structure file")
    size = path.stat().st_size
    if size == 0:
        raise CdpError(f"{path}: file is empty")
    if path.suffix.lower() in (".xyz", ".extxyz"):
        # ase reads as many lines as the first line claims: bound the claim by the file's size
        with open(path, "rb") as fh:
            first = fh.readline(64).strip()
        if first.isdigit() and int(first) > size // 8 + 1:
            raise CdpError(f"{path}: declares {int(first)} atoms but the file has only {size} bytes")
    if _is_density_name(path.name):
        return read(path)[0]
    try:
        atoms = ase_read(str(path))
    except UnknownFileTypeError:
        raise CdpError(f"{path}: unknown structure format (use e.g. .traj, .xyz, .cif, POSCAR, CHGCAR, .cube)") from None
    except Exception as exc:  # ase raises many types for malformed files
        msg = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise CdpError(f"{path}: cannot read the structure ({msg})") from None
    if isinstance(atoms, list):
        atoms = atoms[-1]
    validate_atoms(atoms, name=str(path))
    return atoms


def expand_inputs(items: Tuple[str, ...]) -> Tuple[List[Path], bool]:
    """Structure files from the arguments (a directory contributes its files); True when a directory was given."""
    files: List[Path] = []
    had_dir = False
    for item in items:
        p = Path(item)
        if p.is_dir():
            had_dir = True
            found = [q for q in sorted(p.iterdir()) if q.is_file() and not q.name.startswith(".")
                     and not q.name.endswith(".json")]
            if not found:
                raise CdpError(f"{p}: the directory holds no structure files")
            files.extend(found)
        else:
            files.append(p)
    return files, had_dir


def output_format(path: Path) -> str:
    """chgcar, cube or npy from an output file name."""
    if path.name.lower().endswith(".npy"):
        return "npy"

    try:
        return detect_format(path.name)
    except CdpError:
        raise CdpError(f"{path}: cannot tell the output format from the name (use .CHGCAR, .cube or .npy)") from None


# -- outputs -------------------------------------------------------------------------------------------


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def npy_sidecar(path: Path, cell, origin, pbc, shape, spin: bool, extra: dict) -> None:
    """``<file>.json`` beside a .npy grid: cell, origin, pbc, shape, units and channels (atomic)."""
    pbc = np.broadcast_to(np.asarray(pbc if pbc is not None else True, dtype=bool), (3,))
    meta = {
        "cell": np.asarray(cell, dtype=float).tolist(),
        "origin": np.asarray(origin, dtype=float).tolist(),
        "pbc": [bool(v) for v in pbc],
        "shape": [int(n) for n in shape],
        "units": "e/Angstrom^3",
        "channels": ["total", "magnetisation"] if spin else ["total"],
        "grid": "values[i, j, k] at origin + (i/nx, j/ny, k/nz) @ cell",
        **extra,
    }
    atomic_write_bytes(path.with_name(path.name + ".json"), (json.dumps(meta, indent=1) + "\n").encode("utf-8"))


def _grid_for(atoms, spacing: float, reference: Optional[DensityGrid], name: str):
    """(atoms to write, shape, cell, origin, augmentation source) for one structure."""
    if reference is not None:
        return atoms, reference.shape, reference.cell, reference.origin
    if not np.any(atoms.pbc):
        atoms = molecule_box(atoms, VACUUM)
    cell = np.asarray(atoms.cell.array, dtype=float)
    if abs(np.linalg.det(cell)) < 1e-8:
        raise CdpError(f"{name}: partially periodic structure without a full 3-D cell; give a cell or use --grid-like")
    return atoms, grid_shape_for(cell, spacing), cell, np.zeros(3)


def _check_like(atoms, ref_atoms, name: str, like: str) -> None:
    """The --grid-like reference's grid belongs to this structure: same atoms at the same places (any order)."""
    if len(atoms) != len(ref_atoms) or sorted(atoms.numbers) != sorted(ref_atoms.numbers):
        raise CdpError(f"{name}: the structure ({atoms.get_chemical_formula()}) does not match the --grid-like "
                       f"file {like} ({ref_atoms.get_chemical_formula()}), so its grid is not this structure's")
    # positions too: a molecule written by `cdp predict` sits in its own box, and the grid follows the box
    match_atoms(atoms, ref_atoms, name)


def carry_augmentation(atoms, ref_atoms, reference: DensityGrid, name: str):
    """(atoms grouped by species as a CHGCAR lists them, augmentation, magnetisation augmentation) with the
    reference's per-atom PAW blocks moved to follow those atoms (matched by species and position)."""
    aug, spin_aug = reference.augmentation, reference.spin_augmentation
    if not (aug or spin_aug):
        return atoms, None, None
    atoms = atoms[grouped_by_species(atoms.numbers)]
    order = match_atoms(atoms, ref_atoms, name)
    return atoms, reorder_augmentation(aug, order, name), reorder_augmentation(spin_aug, order, name)


def parse_bytes(text: str) -> int:
    """'2G', '500M', '64k' or a plain number of bytes → bytes (binary multiples); finite and positive."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    t = str(text).strip().lower().rstrip("b").rstrip("i")
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise CdpError(f"--max-memory: cannot read '{text}' as a size (e.g. 2G, 500M)") from None
    try:
        return check_memory(value)
    except CdpError as exc:  # says which bound: at least one byte, finite, at most 2^62
        raise CdpError(f"--max-memory {text}: {exc}") from None


def load_probes(path: str) -> np.ndarray:
    """Probe points [M, 3] (Å, float64) from a .npy file; an empty or unreadable file is a CdpError."""
    p = Path(path)
    if not p.is_file():
        raise CdpError(f"{path}: no such probes file")
    if p.stat().st_size == 0:
        raise CdpError(f"{path}: the probes file is empty (0 bytes); expected a .npy array of shape [M, 3]")
    try:
        data = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        msg = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise CdpError(f"{path}: cannot read probe points ({msg})") from None
    if not isinstance(data, np.ndarray):
        raise CdpError(f"{path}: expected a .npy array of shape [M, 3], not an .npz archive")
    return validate_probes(data, name=path)


@click.command("predict")
@click.argument("structures", nargs=-1, required=True)
@click.option("--model", "model", required=True, help="Checkpoint file, shipped model name (demo) or preset.")
@click.option("-o", "--output", "output", required=True,
              help="Output file (.CHGCAR, .cube, .npy) or, for several structures, a directory.")
@click.option("--spacing", type=float, default=None, help=f"Grid spacing in Å (default {DEFAULT_SPACING}).")
@click.option("--grid-like", "grid_like", type=click.Path(dir_okay=False), default=None,
              help="Reference CHGCAR/cube: use its grid (and CHGCAR augmentation occupancies).")
@click.option("--probes", "probes", type=click.Path(dir_okay=False), default=None,
              help="Predict at the points of FILE.npy [M, 3] (Å) and write a .npy of densities.")
@click.option("--format", "fmt", type=click.Choice(sorted(SUFFIX)), default=None,
              help="File format inside an output directory (default chgcar).")
@click.option("--device", "device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--probe-batch", "probe_batch", type=click.IntRange(min=1), default=None,
              help="Grid points per decoder batch (memory vs speed).")
@click.option("--max-memory", "max_memory", default=None,
              help="Memory budget of one decoder batch (e.g. 2G, 500M, bytes); sizes the probe batches.")
@click.option("--runtime", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True,
              help="torch: a checkpoint/preset; onnx: a directory written by `cdp export --format onnx`.")
@click.option("--no-pbc", "no_pbc", is_flag=True,
              help="Treat every structure as a molecule (no periodic images), whatever its file says.")
@click.option("--skip-existing", "skip_existing", is_flag=True,
              help="Leave outputs that already exist alone (resume a screening).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@torchrun_entry
def command(structures, model, output, spacing, grid_like, probes, fmt, device, probe_batch, max_memory, runtime,
            no_pbc, skip_existing, progress) -> None:
    """Predict the density of STRUCTURE... (files or directories) with MODEL and write it to OUTPUT."""
    if spacing is not None and grid_like is not None:
        raise CdpError("--spacing and --grid-like exclude each other")
    if probes is not None and (spacing is not None or grid_like is not None):
        raise CdpError("--probes predicts at given points; it takes neither --spacing nor --grid-like")
    if spacing is not None and not (np.isfinite(spacing) and spacing > 0):
        raise CdpError(f"--spacing must be a finite positive number of Å, got {spacing}")
    spacing = DEFAULT_SPACING if spacing is None else spacing
    if max_memory is not None and probe_batch is not None:
        raise CdpError("--max-memory and --probe-batch exclude each other")
    budget = parse_bytes(max_memory) if max_memory is not None else None
    if runtime == "torch":
        resolve_device(device)  # an unknown or absent device fails before any file is read

    files, had_dir = expand_inputs(structures)
    out = Path(output)
    to_dir = had_dir or len(files) > 1
    if probes is not None and to_dir:
        raise CdpError("--probes takes exactly one structure")
    if to_dir:
        if out.exists() and not out.is_dir():
            raise CdpError(f"{out}: several structures need an output directory, but this is a file")
        fmt = fmt or "chgcar"
    else:
        fmt_out = output_format(out)
        if probes is not None and fmt_out != "npy":
            raise CdpError(f"{out}: --probes writes a .npy file")
        if fmt is not None and fmt != fmt_out:
            raise CdpError(f"{out}: the name says {fmt_out} but --format says {fmt}")
        fmt = fmt_out
        if not out.parent.is_dir():
            raise CdpError(f"{out.parent}: output directory does not exist")

    # read and check everything before writing anything
    inputs = []
    for f in files:
        atoms = read_structure(f)
        if no_pbc:
            atoms.pbc = False
        check_overlap(atoms, str(f))
        inputs.append((structure_name(f), f, atoms))
    names = [n for n, _, _ in inputs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if to_dir and dup:
        raise CdpError(f"several inputs would write the same output name '{dup[0]}'")
    reference = ref_atoms = None
    if grid_like is not None:
        ref_atoms, reference = read(grid_like)
        for name, _, atoms in inputs:
            _check_like(atoms, ref_atoms, name, grid_like)
    points = load_probes(probes) if probes is not None else None
    # every grid is planned (and a too-fine one refused) before the model loads
    plans = [] if points is not None else [_grid_for(atoms, spacing, reference, name) for name, _, atoms in inputs]
    augmentations = [(None, None)] * len(inputs)
    if reference is not None and fmt == "chgcar" and points is None:
        augmentations = []
        for k, (name, f, atoms) in enumerate(inputs):
            moved, aug, spin_aug = carry_augmentation(plans[k][0], ref_atoms, reference, str(f))
            augmentations.append((aug, spin_aug))
            plans[k] = (moved,) + tuple(plans[k][1:])
    predictor = load_model(model, device=device, probe_batch=probe_batch or DEFAULT_PROBE_BATCH, runtime=runtime,
                           **({"max_memory": budget} if budget is not None else {}))
    spin = bool(getattr(predictor, "spin", False))
    if not spin:  # a model without magnetisation writes no magnetisation block, hence no augmentation for it
        augmentations = [(aug, None) for aug, _ in augmentations]
    for name, f, atoms in inputs:
        check_elements(predictor, atoms, str(f))
        if budget is not None:
            try:
                predictor.batch_for_memory(atoms)
            except CdpError as exc:
                raise CdpError(f"{f}: --max-memory: {exc}") from None

    if points is not None:
        if not session().is_main:  # one output file: rank 0 writes it
            return

        values = predictor.predict(inputs[0][2], points)
        atomic_write_bytes(out, _npy_bytes(values))
        click.echo(f"{inputs[0][0]}: {len(points)} points -> {out}")
        return

    jobs = []
    for (name, f, _), (atoms, shape, cell, origin), (aug, spin_aug) in zip(inputs, plans, augmentations):
        jobs.append(GridJob(name, str(f), atoms, tuple(shape), cell, origin,
                            out / f"{name}{SUFFIX[fmt]}" if to_dir else out, fmt, aug, spin_aug))
    show = (sys.stderr.isatty() if progress is None else progress) and session().is_main

    def bar_for(job):
        if not show:
            return None

        bar = tqdm(total=job.points, desc=job.name, unit="pt", unit_scale=True, leave=False)

        def update(k):
            bar.update(k)
            if bar.n >= job.points:
                bar.close()

        return update

    def finish(job, electrons):
        spin = bool(getattr(predictor, "spin", False))
        if job.fmt == "cube" and spin:
            click.echo(f"note: {job.target}: a cube holds one channel; the magnetisation is not written", err=True)
        if job.fmt == "npy":  # after the grid file: an interrupted run leaves neither
            npy_sidecar(job.target, job.cell, job.origin, job.atoms.pbc, job.shape, spin,
                        {"structure": job.source, "model": str(model)})
        sh = job.shape
        click.echo(f"{job.name}: grid {sh[0]}x{sh[1]}x{sh[2]}, {electrons:.4f} electrons -> {job.target}")

    if reference is not None and reference.magnetisation is not None:
        click.echo(f"note: {grid_like}: non-collinear reference; its magnetisation m is not predicted "
                   f"(the output holds the total density{' and its occupancies' if fmt == 'chgcar' else ''})",
                   err=True)
    # under torchrun: sharded across ranks by grid size, big grids split (cdp.distributed)
    run_grids(predictor, jobs, finish, skip_existing=skip_existing, probe_batch=None,
              directory=out if to_dir else None, progress=bar_for)
