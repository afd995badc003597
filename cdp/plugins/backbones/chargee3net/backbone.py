"""ChargE3Net backbone (Koker et al. 2024): gated e3nn convolutions atom→atom, then one-way atom→probe."""

from __future__ import annotations

import functools
from typing import Callable, List, Optional, Tuple

import torch
from e3nn import o3
from e3nn.nn import Gate
from torch import Tensor, nn

from cdp.core.components import Backbone, Spec
from cdp.core.configs import ChargE3NetConfig
from cdp.core.constants import NUM_ELEMENTS
from cdp.core.types import CdpError
from cdp.plugins.backbones.chargee3net import _build_cache
from cdp.plugins.backbones.chargee3net.conv import E3Convolution
from cdp.plugins.backbones.chargee3net.dense_conv import capture_backbone
from cdp.plugins.backbones.chargee3net.kernel_capture import capture_with_kernel
from cdp.plugins.backbones.chargee3net import fast_conv
from cdp.plugins.backbones.chargee3net.fast_conv import FastE3Convolution, Radial
from cdp.plugins.backbones.chargee3net.tp_scatter import mode
from cdp.plugins.backbones.chargee3net.irreps import gate_layout, get_irreps
from cdp.plugins.backbones.chargee3net.memory import probe_memory
from cdp.plugins.backbones.chargee3net.radial import RadialBasis

# largest radial table evaluated in PyTorch (bytes): larger ones are read from memory more slowly than the
# MLP recomputes them (paper-size convolutions, 10-26 MB at 512 intervals: 1.24x slower decoder at 1 thread)
TORCH_TABLE_MAX_BYTES = 2 << 20
AUTO_TABLE_DTYPES = (torch.float32,)  # dtypes whose CPU inference reads radial tables without tabulate()
_GATE_ROWS = 4096  # rows gated at once in inference: a few MB of temporaries instead of several [N, dim] copies
_ACT = {1: torch.nn.functional.silu, -1: torch.tanh}
_ACT_GATE = {1: torch.sigmoid, -1: torch.tanh}


def _make_gate(irreps_in, irreps_sh, irreps_hidden) -> Gate:
    scalars, gates, gated = gate_layout(irreps_in, irreps_sh, irreps_hidden)
    return _build_cache.gate(
        scalars,
        [_ACT[ir.p] for _, ir in scalars],
        gates,
        [_ACT_GATE[ir.p] for _, ir in gates],
        gated,
    )


def _gate_rows(gate: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``gate(x)`` in blocks of rows (inference), so that the gate's own temporaries stay small.

    The gate acts row by row; autograd and graph capture (tracing, export) get the plain call.
    """
    rows = _GATE_ROWS
    if x.shape[0] <= rows:
        return gate(x)
    first = gate(x[:rows])
    out = first.new_empty((x.shape[0], first.shape[1]))
    out[:rows] = first
    for r0 in range(rows, x.shape[0], rows):
        out[r0 : r0 + rows] = gate(x[r0 : r0 + rows])
    return out


def _mlp_weights(conv: FastE3Convolution, basis: RadialBasis, r: Tensor) -> Tensor:
    """Inference radial weights of edge lengths ``r`` [E] through the MLP ([E + 1, W]: see ``radial_weights``)."""
    return conv.radial_weights(basis(r))


class _GatePlan:
    """``gate(x)`` of an e3nn Gate as column gathers and one product, for training: e3nn's split into
    (scalars, gates, gated) is a column selection and its gating product multiplies each gated column by
    its channel's gate and a constant, all read off the module itself once (same function, ~10 operations
    instead of ~100 small ones per call)."""

    def __init__(self, gate: Gate):
        dim = gate.irreps_in.dim
        with torch.no_grad():
            probe = torch.arange(dim, dtype=torch.float64).unsqueeze(0)
            scalars, gates, gated = (t[0].round().long() for t in gate.sc(probe))
            # the product's constant per gated column, and which gate each gated column reads
            n_gates = gates.numel()
            coef = gate.mul(torch.ones(1, gated.numel(), dtype=torch.float64),
                            torch.ones(1, n_gates, dtype=torch.float64))[0] if n_gates else torch.zeros(0)
            owner = gate.mul(torch.ones(1, gated.numel(), dtype=torch.float64),
                             torch.arange(1, n_gates + 1, dtype=torch.float64).unsqueeze(0))[0] if n_gates else coef
        self.scalars, self.gates, self.gated = scalars, gates, gated
        self.owner = (owner / coef).round().long() - 1 if n_gates else torch.zeros(0, dtype=torch.long)
        self.coef64 = coef
        self.unit = bool((coef == 1).all())
        self._coef: dict = {}
        self._on: dict = {}

    def _indices(self, device: torch.device) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """(scalars, gates, owner, gated) column indices on ``device`` (copied once per device)."""
        if device not in self._on:
            self._on[device] = tuple(t.to(device) for t in (self.scalars, self.gates, self.owner, self.gated))
        return self._on[device]

    def __call__(self, gate: Gate, x: Tensor) -> Tensor:
        scalars_i, gates_i, owner_i, gated_i = self._indices(x.device)
        scalars = gate.act_scalars(x.index_select(1, scalars_i))
        if gates_i.numel() == 0:
            return scalars
        g = gate.act_gates(x.index_select(1, gates_i)).index_select(1, owner_i)
        gated = x.index_select(1, gated_i) * g
        if not self.unit:
            key = (x.dtype, x.device)
            if key not in self._coef:
                self._coef[key] = self.coef64.to(x.device, x.dtype)
            gated = gated * self._coef[key]
        return torch.cat([scalars, gated], dim=1)


class ChargE3NetBackbone(Backbone):
    """One-hot species (119x0e) → ``num_interactions`` atom layers; probe layer i reads atom layer i.

    Edge features: spherical harmonics l ≤ ``lmax`` of the edge vector and a standardised radial
    basis of its length; hidden irreps from :func:`get_irreps` (``mul`` is the channel budget).
    """

    def __init__(
        self,
        num_interactions: int = ChargE3NetConfig.num_interactions,
        num_neighbors: float = ChargE3NetConfig.num_neighbors,
        mul: int = ChargE3NetConfig.mul,
        lmax: int = ChargE3NetConfig.lmax,
        cutoff: float = ChargE3NetConfig.cutoff,
        basis: str = ChargE3NetConfig.basis,
        num_basis: int = ChargE3NetConfig.num_basis,
        radial_neurons: int = ChargE3NetConfig.radial_neurons,
        backend: str = ChargE3NetConfig.backend,
        radial: str = ChargE3NetConfig.radial,
        radial_rtol: float = ChargE3NetConfig.radial_rtol,
    ):
        super().__init__()
        if int(num_interactions) < 1:
            raise CdpError(f"chargee3net: num_interactions must be ≥ 1, got {num_interactions}")
        if int(lmax) < 0:
            raise CdpError(f"chargee3net: lmax must be ≥ 0, got {lmax}")
        if float(cutoff) <= 0:
            raise CdpError(f"chargee3net: cutoff must be > 0, got {cutoff}")
        self.num_interactions = int(num_interactions)
        self.num_neighbors = float(num_neighbors)
        self.mul = int(mul)
        self.lmax = int(lmax)
        self.cutoff = float(cutoff)
        self.basis = str(basis)
        # "fast" and "e3nn" compute the same function with the same parameters (state_dicts interchange)
        backends = {"fast": FastE3Convolution, "e3nn": E3Convolution}
        if backend not in backends:
            raise CdpError(f"chargee3net: unknown backend '{backend}' (fast or e3nn)")
        self.backend = str(backend)
        self._conv_cls = backends[backend]
        self.num_basis = int(num_basis)
        if radial not in ("table", "mlp"):
            raise CdpError(f"chargee3net: unknown radial '{radial}' (table or mlp)")
        if not 0 < float(radial_rtol) < 1e-2:
            raise CdpError(f"chargee3net: radial_rtol must be in (0, 0.01), got {radial_rtol}")
        self.radial = str(radial)
        self.radial_rtol = float(radial_rtol)
        self._tables_allowed = True  # False once trained in this process, until tabulate() is called

        irreps_in = o3.Irreps(f"{NUM_ELEMENTS}x0e")
        self.irreps_sh = o3.Irreps.spherical_harmonics(self.lmax)
        self.irreps_hidden = get_irreps(self.mul, self.lmax)
        if len(self.irreps_hidden) == 0:
            raise CdpError(f"chargee3net: mul={mul} leaves no channels at lmax={lmax}")
        self.in_spec = Spec(irreps=str(irreps_in))

        self._build(irreps_in, int(radial_neurons))

    def _build(self, irreps_in: o3.Irreps, radial_neurons: int) -> None:
        self.atom_basis = RadialBasis(self.cutoff, self.num_basis, self.basis)
        self.probe_basis = RadialBasis(self.cutoff, self.num_basis, self.basis)
        self.atom_convs = nn.ModuleList()
        self.atom_gates = nn.ModuleList()
        self.probe_convs = nn.ModuleList()
        self.probe_gates = nn.ModuleList()

        atom_irreps = [irreps_in]
        gates = []
        irreps = irreps_in
        for _ in range(self.num_interactions):
            gate = _make_gate(irreps, self.irreps_sh, self.irreps_hidden)
            gates.append(gate)
            self.atom_convs.append(
                self._conv_cls(irreps, irreps, self.irreps_sh, gate.irreps_in, self.num_basis, self.num_neighbors, radial_neurons)
            )
            self.atom_gates.append(gate)
            irreps = gate.irreps_out
            atom_irreps.append(irreps)

        # probe layer i: sender = atom layer i output, receiver = previous probe state (starts 1x0e zeros),
        # output layout identical to atom layer i
        probe_irreps = o3.Irreps("0e")
        for i in range(self.num_interactions):
            gate = _make_gate(atom_irreps[i], self.irreps_sh, self.irreps_hidden)
            self.probe_convs.append(
                self._conv_cls(
                    atom_irreps[i + 1], probe_irreps, self.irreps_sh, gate.irreps_in, self.num_basis, self.num_neighbors, radial_neurons
                )
            )
            self.probe_gates.append(gate)
            probe_irreps = gate.irreps_out
        self.irreps_atom_layers = atom_irreps[1:]
        self.irreps_out = probe_irreps
        self.out_spec = Spec(irreps=str(probe_irreps))

    def _edge_features(self, basis: RadialBasis, edge_vec: Tensor, lengths: bool = False):
        """(harmonics [E, sh dim], embedding [E, num_basis]); with ``lengths``, the edge lengths [E] (Å)
        take the embedding's place (what a radial table reads)."""
        sh = o3.spherical_harmonics(self.irreps_sh, edge_vec, normalize=True, normalization="component")
        r = edge_vec.norm(dim=1)
        return sh, (r if lengths else basis(r))

    # -- tabulated radial networks (inference) ------------------------------------------------------
    def _radials(self, convs, basis: RadialBasis, like: Tensor, keep_last: Optional[frozenset] = None) -> List[Radial]:
        """Per convolution, its radial weights as a function of the edge lengths [E] (Å) for inference:
        the table (:meth:`FastE3Convolution.radial_table`) where tables apply, else ``MLP(basis(r))``.

        Tables apply with ``radial="table"`` on CPU, in eval mode, when not trained in this process since
        the last :meth:`tabulate` (callers are already outside autograd and graph capture), to float32
        (``AUTO_TABLE_DTYPES``: a table is exact to float32 rounding, not to float64's; float64 tables are
        used once asked for by ``tabulate(torch.float64)``).  Where the fused kernel runs, it evaluates the
        table per edge itself (:class:`.fast_conv.KernelTable`, any size).  Evaluated in PyTorch, a table is
        only read faster than the MLP computes when it stays in cache, so there each is limited to
        ``TORCH_TABLE_MAX_BYTES`` (larger convolutions keep their MLP).  ``keep_last``: only output irreps of
        these types of the last convolution are read; where the kernel reads its table, that table then holds
        only the weights those outputs need (:meth:`FastE3Convolution.restricted`)."""
        dtypes = set(AUTO_TABLE_DTYPES) | self.__dict__.get("_table_dtypes", set())
        use_tables = (self.radial == "table" and not self.training and self._tables_allowed
                      and like.device.type == "cpu" and like.dtype in dtypes)
        radials: List[Radial] = []
        for k, conv in enumerate(convs):
            table = None
            if use_tables:
                # a table the fused kernel reads per edge has no size limit; one evaluated in PyTorch does
                in_kernel = conv.kernel_reads_tables(like)
                if in_kernel and keep_last is not None and k == len(convs) - 1:
                    restricted = conv.restricted(keep_last, basis, like.dtype, like.device, self.radial_rtol)
                    if restricted is not None:
                        radials.append(fast_conv.KernelTable(restricted[1], restricted, keep_last))
                        continue
                table = conv.radial_table(basis, like.dtype, like.device, self.radial_rtol,
                                          None if in_kernel else TORCH_TABLE_MAX_BYTES, knots=in_kernel)
                if table is not None and in_kernel:
                    radials.append(fast_conv.KernelTable(table))
                    continue
            radials.append(functools.partial(fast_conv.table_weights, table) if table is not None
                           else functools.partial(_mlp_weights, conv, basis))
        return radials

    def tabulate(self, dtype: Optional[torch.dtype] = None, device=None) -> "ChargE3NetBackbone":
        """Build every convolution's radial table now (for the parameters' dtype and device by default), so
        that inference does not pay for it on the first call; re-allows tables after training, and enables
        them for ``dtype`` (float64 included) from now on.  A no-op unless ``radial="table"`` and the fast
        backend.  Returns self."""
        self._tables_allowed = True
        if self.radial != "table" or self.backend != "fast":
            return self
        p = next(self.parameters())
        like = torch.empty(0, dtype=dtype or p.dtype, device=torch.device(device) if device is not None else p.device)
        self.__dict__.setdefault("_table_dtypes", set()).add(like.dtype)
        if like.device.type == "cpu":
            self._radials(self.atom_convs, self.atom_basis, like)
            self._radials(self.probe_convs, self.probe_basis, like, self._last_layer_keep())
        return self

    def train(self, mode: bool = True):
        """``nn.Module.train``; training drops the radial tables and keeps them off until :meth:`tabulate`
        (validation during training runs the radial MLPs it trains)."""
        if mode:
            self._tables_allowed = False
            for conv in list(self.atom_convs) + list(self.probe_convs):
                if isinstance(conv, FastE3Convolution):
                    conv.drop_radial_tables()
        return super().train(mode)

    def encode(self, x: Tensor, edge_index: Tensor, edge_vec: Tensor) -> List[Tensor]:
        """Atom features after every interaction layer."""
        # the mode first: under torch.export a test on the edge count would specialise the dynamic size
        run_mode = mode()
        inference = self.backend == "fast" and run_mode == "inference"
        if inference:
            # radial weights from the edge lengths, per convolution (a table or the MLP of the embedding)
            radial = self._radials(self.atom_convs, self.atom_basis, edge_vec)
            features = lambda vec: self._edge_features(self.atom_basis, vec, True)  # noqa: E731
            if edge_vec.shape[0] > fast_conv.FEATURE_WINDOW:  # fewer edges: computed once, ≤ 12 MB
                # harmonics and lengths computed a window of edges at a time in every layer (cheap next to
                # the convolution) instead of held for all atom edges
                step = lambda conv, h, k: conv.forward_from_vectors(h, h, edge_index, edge_vec, features, radial[k])  # noqa: E731
            else:
                sh, r = features(edge_vec)
                step = lambda conv, h, k: conv.infer(h, h, edge_index, sh, r, radial[k])  # noqa: E731
        else:
            sh, emb = self._edge_features(self.atom_basis, edge_vec)
            step = lambda conv, h, k: conv(h, h, edge_index, sh, emb)  # noqa: E731
        layers: List[Tensor] = []
        h = x
        for k, (conv, gate) in enumerate(zip(self.atom_convs, self.atom_gates)):
            h = self._gate(conv, gate, step(conv, h, k), ("atom", len(layers)), run_mode)
            layers.append(h)
        return layers

    def read_only(self, irreps: Optional[str]) -> None:
        """Only output channels of these irreps types are read (:meth:`Backbone.read_only`): fast inference
        then computes, in the last probe layer, only what the gate needs for them (:meth:`_last_layer_keep`)."""
        types = None if irreps is None else frozenset(ir for _, ir in o3.Irreps(irreps))
        self.__dict__["_read_types"] = types

    def _last_layer_keep(self):
        """The output irreps types of the last probe convolution its gate needs for the read channels
        (scalars of those types; for gated irreps of those types, them and the gates), or None for all."""
        read = self.__dict__.get("_read_types")
        if read is None or not self.probe_gates:
            return None
        gate = self.probe_gates[-1]
        types = {ir for _, ir in gate.irreps_scalars} & read
        gated = {ir for _, ir in gate.irreps_gated} & read
        if gated:
            types |= gated | {ir for _, ir in gate.irreps_gates}
        return frozenset(types)

    def decode(self, atom_layers: List[Tensor], edge_index: Tensor, edge_vec: Tensor, num_probes: int) -> Tensor:
        """Probe features [M, out_spec.dim]; probe layer i reads ``atom_layers[i]``.  In fast inference,
        channels :meth:`read_only` excludes are not computed in the last layer (there they are finite but
        not the network's values)."""
        run_mode = mode()
        inference = self.backend == "fast" and run_mode == "inference"
        radial = self._radials(self.probe_convs, self.probe_basis, edge_vec, self._last_layer_keep()) if inference else None
        sh, rad = self._edge_features(self.probe_basis, edge_vec, inference)
        p = edge_vec.new_zeros((num_probes, 1))
        for i, (conv, gate) in enumerate(zip(self.probe_convs, self.probe_gates)):
            if inference:
                out = conv.infer(atom_layers[i], p, edge_index, sh, rad, radial[i])
            else:
                out = conv(atom_layers[i], p, edge_index, sh, rad)
            p = self._gate(conv, gate, out, ("probe", i), run_mode)
        return p

    def _gate(self, conv: nn.Module, gate: Gate, x: Tensor, key: tuple, run_mode: str) -> Tensor:
        """``gate(x)`` for ``run_mode`` (:func:`.tp_scatter.mode`): the plain call under capture; the gather
        form (:class:`_GatePlan`) in inference (in row blocks) and for training through the fused kernels."""
        if run_mode == "inference" or (run_mode == "autograd" and isinstance(conv, FastE3Convolution)
                                       and conv.implementation(x, run_mode).name == "native"):
            plans = self.__dict__.setdefault("_gate_plans", {})
            if key not in plans:
                plans[key] = _GatePlan(gate)
            plan = plans[key]
            if run_mode == "inference":  # the gather form (half the time of e3nn's), in row blocks
                return _gate_rows(lambda rows: plan(gate, rows), x)
            return plan(gate, x)
        return gate(x)

    def capture_form(self, ops: str = "standard") -> nn.Module:
        """This trained backbone's encode/decode as dense constants and tabulated radial weights, for graph
        capture (export): see :mod:`cdp.plugins.backbones.chargee3net.dense_conv`; with ``ops="cdp"`` the
        probe convolutions call the fused kernel as one operator (:mod:`.kernel_capture`, :mod:`.ort_ops`)."""
        if ops == "cdp":
            return capture_with_kernel(self)
        if ops != "standard":
            raise CdpError(f"unknown export operators '{ops}' (standard or cdp)")
        return capture_backbone(self)

    def probe_memory(self, itemsize: int = 4, edges_per_probe: float = 30.0):
        """(fixed bytes, bytes per probe) of one decode call: sizes probe batches for a memory budget."""
        return probe_memory(self, itemsize, edges_per_probe)

    def extra_repr(self) -> str:
        return (
            f"num_interactions={self.num_interactions}, mul={self.mul}, lmax={self.lmax}, cutoff={self.cutoff}, "
            f"num_basis={self.num_basis}, basis={self.basis!r}, num_neighbors={self.num_neighbors}, "
            f"backend={self.backend!r}, radial={self.radial!r}, radial_rtol={self.radial_rtol:g}"
        )
