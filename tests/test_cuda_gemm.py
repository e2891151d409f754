"""GPU tests of the fused mixed-precision grouped GEMM (mxmoe._cuda.gemm_*) against the C reference
(mxmoe.ref_group_gemm) on canonical buffers from mxmoe.quantize_rtn.  The kernel tests skip without a usable CUDA
device; the bad-input tests need only the built extension (validation happens before any device call)."""
from __future__ import annotations

import os

import numpy as np
import pytest

import mxmoe

_cuda = pytest.importorskip("mxmoe._cuda", reason="mxmoe._cuda is not built (no nvcc at build time)")

needs_gpu = pytest.mark.skipif(not mxmoe.cuda_available(), reason=mxmoe.cuda_status())

# Tolerances on ‖Y - Y_ref‖ / ‖Y_ref‖ (Frobenius), Y_ref from the C reference in f32.
#  - a16 and int a8/a4: operands are exact on both sides (bf16 activations, integer codes, exact int32 sums);
#    the differences are f32 summation order / scale-multiplication order (~1e-6) and the kernel's bf16 output
#    rounding (relative 2^-9 per element at most, ~1.1e-3 RMS).
OUT_BF16_TOL = 4e-3
#  - fp8: Hopper's fp8 tensor cores accumulate with fewer mantissa bits than f32 over each k32 step, on top of
#    the bf16 output rounding.
OUT_FP8_TOL = 1e-2

SCHEMES = [name for _, name, *_ in mxmoe._C.SCHEME_TABLE]
FP8_SCHEMES = {"w8a8_g-1_sym_fp8"}


def _torch():
    import torch

    return torch


def _act_format(scheme: mxmoe.Scheme) -> str:
    if scheme.a_bits == 16:
        return "bf16"
    if scheme.a_bits == 4:
        return "int4"
    return "fp8" if scheme.name.endswith("_fp8") else "int8"


def _k_multiple(scheme: mxmoe.Scheme) -> int:
    return 128 if (scheme.group_size > 0 or scheme.w_bits < 4) else 32


class Layer:
    """Device buffers of one fused launch: activations of every format, problems, row offsets, output."""

    def __init__(self, x: np.ndarray, expert_rows: list[int], problems: list[tuple[str, int, int, int]],
                 seed: int = 0, ldy_extra: int = 16, weights: list[np.ndarray] | None = None,
                 rowsum_int8: bool = False):
        torch = _torch()
        self.rng = np.random.default_rng(seed)
        self.x = x  # f32 [rows, K], bf16-representable
        self.rows, self.k = x.shape
        self.expert_rows = expert_rows
        self.row_offsets = np.concatenate([[0], np.cumsum(expert_rows)]).astype(np.int32)
        assert self.row_offsets[-1] == self.rows
        self.keep = []  # device tensors referenced by raw pointers
        self.weights = []
        records = []
        self.max_col = 0
        for index, (scheme_name, expert, n, out_col) in enumerate(problems):
            W = weights[index] if weights is not None else self.rng.standard_normal((n, self.k)).astype(np.float32)
            qw = mxmoe.quantize_rtn(W, scheme_name)
            self.weights.append((scheme_name, expert, n, out_col, qw))
            qweight = self._dev(qw.qweight.view(np.int16 if qw.qweight.dtype == np.uint16 else np.int32))
            scales = self._dev(qw.scales) if qw.scales is not None else None
            zeros = self._dev(qw.zeros) if qw.zeros is not None else None
            records.append((scheme_name, expert, n, self.k, out_col, qweight.data_ptr(),
                            scales.data_ptr() if scales is not None else 0,
                            zeros.data_ptr() if zeros is not None else 0))
            self.max_col = max(self.max_col, out_col + n)
        self.table, self.info = _cuda.gemm_problems_pack(records)
        self.d_table = self._dev(np.frombuffer(self.table, dtype=np.uint8).copy()) if records else None
        self.ldy = self.max_col + ldy_extra
        self.acts = {"bf16": self._dev_t(torch.from_numpy(x).to(torch.bfloat16))}
        self.qacts = {}
        formats = {_act_format(mxmoe.as_scheme(p[0])) for p in problems}
        for fmt, scheme_name in (("int8", "w8a8_g-1_sym"), ("fp8", "w8a8_g-1_sym_fp8"), ("int4", "w4a4_g-1_sym")):
            if fmt in formats and self.rows > 0:
                qa = mxmoe.quantize_activations(x, scheme_name)
                self.qacts[fmt] = qa
                self.acts[fmt] = self._dev(qa.values.view(np.int8) if fmt == "int8" else qa.values)
                self.acts["scale_" + fmt] = self._dev(qa.scales)
                if fmt == "int8" and rowsum_int8:  # the codes' row sums, as the quantizing gather writes them
                    self.acts["rowsum_int8"] = self._dev(np.asarray(qa.values).astype(np.int64).sum(axis=1)
                                                         .astype(np.int32))
        self.d_row_offsets = self._dev(self.row_offsets)
        n_problems = len(records)
        self.workspace_bytes = _cuda.gemm_workspace_bytes(max(self.rows, 1), n_problems)
        self.workspace = torch.empty(self.workspace_bytes, dtype=torch.uint8, device="cuda")

    def _dev(self, array: np.ndarray):
        return self._dev_t(_torch().from_numpy(np.ascontiguousarray(array)))

    def _dev_t(self, tensor):
        t = tensor.cuda()
        self.keep.append(t)
        return t

    def acts_tuple(self, ld: int | None = None) -> tuple:
        def ptr(name):
            t = self.acts.get(name)
            return t.data_ptr() if t is not None else 0

        acts = (ptr("bf16"), ptr("int8"), ptr("fp8"), ptr("int4"), ptr("scale_int8"), ptr("scale_fp8"),
                ptr("scale_int4"), self.k if ld is None else ld)
        return acts + (ptr("rowsum_int8"),) if "rowsum_int8" in self.acts else acts

    def run(self, **overrides):
        torch = _torch()
        y = torch.full((max(self.rows, 1), self.ldy), float("nan"), dtype=torch.bfloat16, device="cuda")
        args = dict(problems=self.d_table.data_ptr() if self.d_table is not None else 0, info=self.info,
                    row_offsets=self.d_row_offsets.data_ptr(), n_groups=len(self.expert_rows), max_rows=self.rows,
                    acts=self.acts_tuple(), y=y.data_ptr(), ldy=self.ldy, workspace=self.workspace.data_ptr(),
                    workspace_bytes=self.workspace_bytes, stream=torch.cuda.current_stream().cuda_stream)
        args.update(overrides)
        _cuda.gemm_fused(**args)
        torch.cuda.synchronize()
        return y.float().cpu().numpy()

    def reference(self) -> np.ndarray:
        """Y_ref [rows, ldy] f32 with NaN where no problem writes."""
        y = np.full((max(self.rows, 1), self.ldy), np.nan, dtype=np.float32)
        for scheme_name, expert, n, out_col, qw in self.weights:
            lo, hi = self.row_offsets[expert], self.row_offsets[expert + 1]
            if hi > lo:
                y[lo:hi, out_col:out_col + n] = mxmoe.ref_group_gemm([(self.x[lo:hi], qw)])[0]
        return y


def _bf16_round(x: np.ndarray) -> np.ndarray:
    torch = _torch()
    return torch.from_numpy(x).to(torch.bfloat16).float().numpy()


def _random_x(rows: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # a few outlier channels, as real activations have: they stress the per-token scales
    x = rng.standard_normal((rows, k)).astype(np.float32)
    x[:, rng.integers(0, k, size=max(1, k // 64))] *= 8.0
    return _bf16_round(x)


def _check(layer: Layer, y: np.ndarray, tol: float, what: str) -> None:
    ref = layer.reference()
    written = ~np.isnan(ref)
    assert not np.isnan(y[written]).any(), f"{what}: some outputs were not written (NaN poison survived)"
    assert np.isnan(y[~written]).all(), f"{what}: the kernel wrote outside its problems' rows/columns"
    if written.any():
        err = np.linalg.norm(y[written] - ref[written]) / max(np.linalg.norm(ref[written]), 1e-30)
        assert err <= tol, f"{what}: relative error {err:.3g} > {tol}"


def _tol(scheme_name: str) -> float:
    return OUT_FP8_TOL if scheme_name in FP8_SCHEMES else OUT_BF16_TOL


def enumerate_expert_rows():
    """Rows per expert: empty experts, 1 row, 17 rows (the first fat tile), one expert taking everything (70 = 64 + 6,
    an M tail), and a launch averaging >= 96 rows per expert, which runs the prefill variant (128-row fat tiles:
    400 = 3 * 128 + 16) with a thin expert (3 rows) in it."""
    yield [0, 1, 17, 5]
    yield [0, 0, 70, 0]
    yield [3, 400, 0, 40]


@needs_gpu
@pytest.mark.parametrize("scheme_name", SCHEMES)
@pytest.mark.parametrize("case", range(3))
def test_gemm_fused_per_scheme(scheme_name, case):
    scheme = mxmoe.as_scheme(scheme_name)
    expert_rows = list(enumerate_expert_rows())[case]
    # K off every stage size (128, and 256 / 384 / 512 for thin sub-8-bit tiles): 160 = 128 + 32 and 288 for
    # per-channel schemes, 256 and 640 for g128; 1408 is Qwen1.5-MoE's expert width.  N = 144 and 272 are off the
    # 128-column tile.
    k = (160, 288, 1408)[case] if _k_multiple(scheme) == 32 else (256, 640, 1408)[case]
    n = (144, 144, 272)[case]
    x = _random_x(sum(expert_rows), k, seed=case)
    problems = [(scheme_name, e, n, 16) for e in range(len(expert_rows))]
    layer = Layer(x, expert_rows, problems, seed=case + 10)
    _check(layer, layer.run(), _tol(scheme_name), f"{scheme_name=}, {expert_rows=}, {n=}, {k=}")


STREAM_SCHEMES = ["w8a16_g-1_sym", "w4a16_g-1_asym", "w4a16_g128_asym", "w2a16_g128_asym"]


@needs_gpu
@pytest.mark.parametrize("scheme_name", STREAM_SCHEMES)
@pytest.mark.parametrize("k_case", range(3))
def test_gemm_fused_decode_stream(scheme_name, k_case):
    """The warp-streaming micro-kernel of thin weight-only tiles: 1, 8, 9 and 16 rows per expert (rows 8-15 of the
    mma are skipped at <= 8), K ending inside a chunk and inside an activation slice, a K crossing many slices, and
    N = 400 = 3 * 128 + 16 (the last tile has one active warp of eight)."""
    scheme = mxmoe.as_scheme(scheme_name)
    per_channel = _k_multiple(scheme) == 32
    k = ((160, 1440, 4640) if per_channel else (640, 1408, 4608))[k_case]
    expert_rows = [1, 8, 0, 9, 16]
    x = _random_x(sum(expert_rows), k, seed=20 + k_case)
    problems = [(scheme_name, e, 400, 0) for e in range(len(expert_rows))]
    layer = Layer(x, expert_rows, problems, seed=30 + k_case)
    _check(layer, layer.run(), _tol(scheme_name), f"{scheme_name=}, {k=}")


@needs_gpu
@pytest.mark.parametrize("mix", ["w4", "w4-w3-w2"])
@pytest.mark.parametrize("split", ["1", "0"])
def test_gemm_fused_split_tail(mix, split, monkeypatch):
    """Fewer decode stream tiles than CTAs, with long K (8 problems × 8 tiles of 128 columns, K = 4224: 16.5 chunks of
    w4, 8.25 of w2), so the tiles are cut along K into pieces whose segments publish partial tiles and the last one
    to arrive sums them.  In the second mix a w3a16 problem (no stream kernel: cannot be split), ranked
    between the w4 and the w2 problems, moves the split's start behind it.  K ends inside a chunk and inside a
    slice; 1-16 rows per expert (both mma layouts).  Checked with the split on and off (MXMOE_GEMM_SPLIT_TAIL=0), and
    bit-identical over two launches (slots are summed in a fixed order)."""
    monkeypatch.setenv("MXMOE_GEMM_SPLIT_TAIL", split)
    k = 4096 + 128
    names = (["w4a16_g128_asym"] * 8 if mix == "w4" else
             ["w4a16_g128_asym"] * 4 + ["w3a16_g128_asym"] * 2 + ["w2a16_g128_asym"] * 2)
    expert_rows = [1, 16, 9, 8, 3, 12, 5, 14]
    x = _random_x(sum(expert_rows), k, seed=60)
    problems = [(name, e, 1024, 0) for e, name in enumerate(names)]
    layer = Layer(x, expert_rows, problems, seed=61)
    first = layer.run()
    _check(layer, first, OUT_BF16_TOL, f"{mix=}, {split=}")
    np.testing.assert_array_equal(first, layer.run())


@needs_gpu
@pytest.mark.parametrize("cost", ["0", None, "1000000"])
def test_gemm_fused_split_runs(cost, monkeypatch):
    """Pieces of the split tail that end one tile and start the next, also where the next is of another scheme:
    12 problems × 8 tiles of w4 g128, w4 per-channel asym (zero points per column) and w2 g128, K = 4224 (16.5 chunks
    of w4, 8.25 of w2), 1-16 rows per expert (both mma layouts).  The split's cost model (MXMOE_GEMM_SPLIT_COST in
    chunks) at 0, the default and "never"; bit-identical over two launches."""
    if cost is None:
        monkeypatch.delenv("MXMOE_GEMM_SPLIT_COST", raising=False)
    else:
        monkeypatch.setenv("MXMOE_GEMM_SPLIT_COST", cost)
    k = 4096 + 128
    names = ["w4a16_g128_asym", "w4a16_g-1_asym", "w2a16_g128_asym"]
    expert_rows = [int(r) for r in np.random.default_rng(70).integers(1, 17, size=12)]
    x = _random_x(sum(expert_rows), k, seed=71)
    problems = [(names[e % 3], e, 1024, 0) for e in range(len(expert_rows))]
    layer = Layer(x, expert_rows, problems, seed=72)
    first = layer.run()
    _check(layer, first, OUT_BF16_TOL, f"{cost=}")
    np.testing.assert_array_equal(first, layer.run())


def _schedule_header(layer: Layer) -> dict[str, int]:
    """The schedule kernel's scalars at the start of the workspace (schedule_view in the kernel source)."""
    head = layer.workspace[:20].cpu().numpy().view(np.int32)
    return {"total": int(head[1]), "tail_start": int(head[2]), "pieces": int(head[3]), "tail_chunks": int(head[4])}


@needs_gpu
@pytest.mark.parametrize("cost", ["0", None, "1000000"])
def test_gemm_fused_split_stretch(cost, monkeypatch):
    """A launch of more than two rounds of tiles: the last full round and the partial one (the stretch) are cut into
    pieces, the rounds before it run whole.  Problems of w8a16 (no stream kernel: never split; the heaviest tiles,
    so ranked first) reach into the stretch, so its first claims are whole w8 tiles and the pieces follow; then w4
    g128, w4 per-channel and w2 g128 problems, K = 1152 (4.5 chunks of w4, 2.25 of w2), 1-16 rows per expert (both
    mma layouts).  At split cost 0 the schedule must split (read back from the workspace); every setting matches the
    reference, bit-identical over two launches."""
    torch = _torch()
    if cost is None:
        monkeypatch.delenv("MXMOE_GEMM_SPLIT_COST", raising=False)
    else:
        monkeypatch.setenv("MXMOE_GEMM_SPLIT_COST", cost)
    ctas = 2 * torch.cuda.get_device_properties(0).multi_processor_count  # the decode variant's grid
    k, n = 1152, 1024  # 8 tiles per problem
    problems_count = (9 * ctas // 4 + 7) // 8  # ~2.25 rounds of tiles
    w8_count = (ctas + ctas // 8 + 7) // 8     # whole tiles up to ~1/8 into the stretch
    names = ["w8a16_g-1_sym"] * w8_count + [("w4a16_g128_asym", "w4a16_g-1_asym", "w2a16_g128_asym")[e % 3]
                                            for e in range(problems_count - w8_count)]
    expert_rows = [int(r) for r in np.random.default_rng(80).integers(1, 17, size=len(names))]
    x = _random_x(sum(expert_rows), k, seed=81)
    problems = [(name, e, n, 0) for e, name in enumerate(names)]
    layer = Layer(x, expert_rows, problems, seed=82)
    first = layer.run()
    header = _schedule_header(layer)
    if cost == "0":
        assert header["tail_start"] == w8_count * 8 and header["pieces"] > 0, header
        assert header["total"] == header["tail_start"] + header["pieces"], header
    if cost == "1000000":
        assert header["pieces"] == 0 and header["tail_start"] == header["total"] == len(names) * 8, header
    _check(layer, first, OUT_BF16_TOL, f"{cost=}")
    np.testing.assert_array_equal(first, layer.run())


@needs_gpu
@pytest.mark.parametrize("scheme_name, rowsum", [("w8a8_g-1_sym", False), ("w8a8_g-1_sym", True),
                                                 ("w8a8_g-1_sym_fp8", False)])
@pytest.mark.parametrize("k", [160, 4128])
@pytest.mark.parametrize("ldy_extra", [16, 2])
def test_gemm_fused_prefill_wgmma(scheme_name, rowsum, k, ldy_extra):
    """The prefill variant's wgmma tiles (128 rows × 256 columns on sm_90a; mma.sync elsewhere): M tails (300 = 2·128
    + 44, 129 = 128 + 1), a 1-row expert (thin tile) in the same launch, N = 400 = 256 + 144, and K ending inside
    a 128-byte stage (160 = 128 + 32, 4128 = 32·128 + 32).  Y rows of 416 columns (the epilogue's 16-byte stores)
    and of 402 (ldy % 8 != 0: its 4-byte stores); NaN in the 2 or 16 columns past N must stay untouched.  int8 with
    the rows' code sums given (as the quantizing gather writes them) and taken by the tile itself."""
    expert_rows = [300, 0, 129, 1]  # 107.5 rows per expert on average: the prefill variant
    x = _random_x(sum(expert_rows), k, seed=40 + k)
    problems = [(scheme_name, e, 400, 0) for e in range(len(expert_rows))]
    layer = Layer(x, expert_rows, problems, seed=50, ldy_extra=ldy_extra, rowsum_int8=rowsum)
    assert len(layer.acts_tuple()) == (9 if rowsum else 8)
    _check(layer, layer.run(), _tol(scheme_name), f"{scheme_name=}, {rowsum=}, {k=}, ldy={layer.ldy}")


@needs_gpu
@pytest.mark.parametrize("expert_rows", [[2, 0, 33, 1, 16, 90], [300, 0, 33, 1, 16, 290]],
                         ids=["decode-variant", "prefill-variant"])
def test_gemm_fused_mixed(expert_rows):
    """One launch, every candidate scheme at once: gate and up of one expert in different schemes side by side in
    Y's columns (up narrower, leaving a column gap that must stay untouched), thin and fat tiles, a long K; in both
    kernel variants (the second averages >= 96 rows per expert)."""
    k = 2048
    x = _random_x(sum(expert_rows), k, seed=7)
    problems = []
    for e in range(len(expert_rows)):
        problems += [(SCHEMES[2 * e], e, 256, 0), (SCHEMES[2 * e + 1], e, 128, 256 + 32)]
    layer = Layer(x, expert_rows, problems, seed=3)
    tol = max(_tol(p[0]) for p in problems)
    _check(layer, layer.run(), tol, "mixed launch")


@needs_gpu
def test_gemm_fused_repeat_is_deterministic():
    """The schedule resets its claim counter: two launches on the same workspace give bit-identical results."""
    expert_rows = [5, 40, 0, 1]
    x = _random_x(sum(expert_rows), 256, seed=11)
    problems = [(s, e, 128, 0) for e, s in enumerate(["w4a16_g128_asym", "w8a8_g-1_sym", "w16a16", "w2a16_g128_asym"])]
    layer = Layer(x, expert_rows, problems, seed=12)
    first, second = layer.run(), layer.run()
    np.testing.assert_array_equal(first, second)


@needs_gpu
def test_gemm_fused_schedule_then_compute():
    """part='schedule' on a second stream, then part='compute' ordered by an event, equals the whole call; a
    second layer's schedule made in between into its own workspace does not disturb the first."""
    torch = _torch()
    expert_rows = [3, 0, 17, 1, 9]
    x = _random_x(sum(expert_rows), 384, seed=31)
    mix = ["w4a16_g128_asym", "w8a8_g-1_sym", "w2a16_g128_asym", "w16a16", "w4a8_g128_asym"]
    problems = [(mix[e], e, 128, 0) for e in range(5)] + [("w4a16_g-1_asym", e, 256, 128) for e in range(5)]
    layer = Layer(x, expert_rows, problems, seed=32)
    other = Layer(x, expert_rows, [("w4a16_g128_asym", e, 128, 0) for e in range(5)], seed=33)
    whole = layer.run()
    side, main = torch.cuda.Stream(), torch.cuda.current_stream()
    side.wait_stream(main)
    scheduled = torch.cuda.Event()
    y = torch.full((layer.rows, layer.ldy), float("nan"), dtype=torch.bfloat16, device="cuda")
    y_other = torch.full((other.rows, other.ldy), float("nan"), dtype=torch.bfloat16, device="cuda")

    def args(lay, out, stream, part):
        return dict(problems=lay.d_table.data_ptr(), info=lay.info, row_offsets=lay.d_row_offsets.data_ptr(),
                    n_groups=5, max_rows=lay.rows, acts=lay.acts_tuple(), y=out.data_ptr(), ldy=lay.ldy,
                    workspace=lay.workspace.data_ptr(), workspace_bytes=lay.workspace_bytes, stream=stream,
                    part=part)

    with torch.cuda.stream(side):
        _cuda.gemm_fused(**args(layer, y, side.cuda_stream, "schedule"))
        scheduled.record(side)
        _cuda.gemm_fused(**args(other, y_other, side.cuda_stream, "schedule"))
    main.wait_event(scheduled)
    _cuda.gemm_fused(**args(layer, y, main.cuda_stream, "compute"))
    main.wait_stream(side)
    _cuda.gemm_fused(**args(other, y_other, main.cuda_stream, "compute"))
    torch.cuda.synchronize()
    np.testing.assert_array_equal(y.float().cpu().numpy(), whole)
    _check(other, y_other.float().cpu().numpy(), _tol("w4a16_g128_asym"), "second schedule, own workspace")


@needs_gpu
def test_gemm_fused_cuda_graph():
    """The pair of launches is graph-capturable and reads the rows per expert from the device at replay time."""
    torch = _torch()
    expert_rows = [7, 0, 20, 3]
    x = _random_x(sum(expert_rows), 256, seed=21)
    problems = [("w4a16_g128_asym", e, 128, 0) for e in range(4)] + [("w8a8_g-1_sym", e, 128, 128) for e in range(4)]
    layer = Layer(x, expert_rows, problems, seed=22)
    y = torch.full((layer.rows, layer.ldy), float("nan"), dtype=torch.bfloat16, device="cuda")
    stream = torch.cuda.Stream()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        args = dict(problems=layer.d_table.data_ptr(), info=layer.info, row_offsets=layer.d_row_offsets.data_ptr(),
                    n_groups=4, max_rows=layer.rows, acts=layer.acts_tuple(), y=y.data_ptr(), ldy=layer.ldy,
                    workspace=layer.workspace.data_ptr(), workspace_bytes=layer.workspace_bytes,
                    stream=stream.cuda_stream)
        _cuda.gemm_fused(**args)  # warm-up outside the graph (sets the kernel's shared-memory attribute)
        stream.synchronize()
        with torch.cuda.graph(graph, stream=stream):
            _cuda.gemm_fused(**args)
    # new routing, same total rows: the replay must follow the device row offsets
    new_rows = [0, 25, 1, 4]
    layer.expert_rows = new_rows
    layer.row_offsets = np.concatenate([[0], np.cumsum(new_rows)]).astype(np.int32)
    layer.d_row_offsets.copy_(torch.from_numpy(layer.row_offsets))
    y.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    _check(layer, y.float().cpu().numpy(), OUT_BF16_TOL, "graph replay with new row offsets")


@needs_gpu
def test_gemm_fused_mini_model():
    """Real trained expert weights (models/qwen2moe-mini, layer 0 gate_proj of 4 experts) in a mixed plan."""
    torch = _torch()
    st = pytest.importorskip("safetensors.torch")
    root = os.path.join(os.path.dirname(__file__), "..", "models", "qwen2moe-mini")
    tensors = {}
    for f in sorted(os.listdir(root)):
        if f.endswith(".safetensors"):
            tensors.update(st.load_file(os.path.join(root, f)))
    blocks = [tensors[f"model.layers.0.mlp.experts.{e}.gate_proj.weight"].to(torch.float32).numpy() for e in range(4)]
    n, k = blocks[0].shape
    expert_rows = [9, 0, 1, 24]
    x = _random_x(sum(expert_rows), k, seed=5)
    plan = ["w4a16_g128_asym", "w8a8_g-1_sym", "w3a16_g128_asym", "w4a8_g128_asym"]
    layer = Layer(x, expert_rows, [(plan[e], e, n, 0) for e in range(4)], weights=blocks)
    _check(layer, layer.run(), OUT_BF16_TOL, "qwen2moe-mini layer 0 gate_proj, mixed plan")


# ---- bad input: ValueError before any launch (these need the extension, not a GPU) ----

def _record(**kw):
    base = dict(scheme="w4a16_g128_asym", expert=0, n=128, k=256, out_col=0, qweight=4096, scales=8192,
                zeros=12288)
    base.update(kw)
    return (base["scheme"], base["expert"], base["n"], base["k"], base["out_col"], base["qweight"], base["scales"],
            base["zeros"])


@pytest.mark.parametrize("bad, message", [
    (dict(n=120), "n=120"),
    (dict(n=0), "n=0"),
    (dict(k=160), "k=160"),             # g128 needs k % 128
    (dict(scheme="w3a16_g-1_asym"), "no GPU kernel"),
    (dict(scheme=12), "scheme_id=12"),
    (dict(expert=-1), "expert=-1"),
    (dict(out_col=8), "out_col=8"),
    (dict(qweight=0), "qweight"),
    (dict(qweight=4100), "qweight"),    # not 16-byte aligned
    (dict(scales=0), "scales"),
    (dict(zeros=0), "zeros"),
])
def test_gemm_problems_pack_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        _cuda.gemm_problems_pack([_record(), _record(**bad)])


def test_gemm_problems_pack_type_errors():
    with pytest.raises(TypeError):
        _cuda.gemm_problems_pack([("w16a16", 0, 128)])
    with pytest.raises(ValueError, match="at most"):
        _cuda.gemm_problems_pack([_record()] * (_cuda.GEMM_MAX_PROBLEMS + 1))


def test_gemm_problems_pack_info():
    table, info = _cuda.gemm_problems_pack([_record(), _record(scheme="w8a8_g-1_sym", expert=3, n=64, k=512,
                                                               out_col=128, zeros=0)])
    assert len(table) == 2 * _cuda.PROBLEM_BYTES
    formats_mask, max_k, max_expert, n_problems, max_out_col_end = info
    assert formats_mask == (1 << _cuda.ACT_BF16) | (1 << _cuda.ACT_INT8)
    assert (max_k, max_expert, n_problems, max_out_col_end) == (512, 3, 2, 192)


def _fused_args(**overrides):
    _, info = _cuda.gemm_problems_pack([_record()])
    args = dict(problems=4096, info=info, row_offsets=4096, n_groups=1, max_rows=8,
                acts=(4096, 0, 0, 0, 0, 0, 0, 256), y=4096, ldy=128, workspace=4096,
                workspace_bytes=_cuda.gemm_workspace_bytes(8, 1), stream=0)
    args.update(overrides)
    return args


@pytest.mark.parametrize("bad, message", [
    (dict(n_groups=0), "n_groups=0"),
    (dict(ldy=64), "ldy=64"),
    (dict(ldy=129), "ldy=129"),
    (dict(workspace_bytes=16), "workspace"),
    (dict(acts=(4096, 0, 0, 0, 0, 0, 0, 128)), "ld=128"),
    (dict(acts=(0, 0, 0, 0, 0, 0, 0, 256)), "bf16 activations"),
    (dict(acts=(4096, 0, 0, 0, 0, 0, 0, 260)), "ld=260"),
    (dict(max_rows=-1), "max_rows=-1"),
    (dict(y=0), "NULL"),
])
def test_gemm_fused_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        _cuda.gemm_fused(**_fused_args(**bad))


def _layer_args(down_scheme="w4a16_g128_asym", **overrides):
    """A two-stage launch of one expert: gate and up (n = I = 128, k = H = 256), down (n = 256, k = 128)."""
    _, info_gate_up = _cuda.gemm_problems_pack([_record(), _record(out_col=128)])
    _, info_down = _cuda.gemm_problems_pack([_record(scheme=down_scheme, n=256, k=128)])
    args = dict(problems=4096, info_gate_up=info_gate_up, info_down=info_down, row_offsets=4096, n_groups=1,
                max_rows=8, x=(4096, 0, 0, 0, 0, 0, 0, 256), gate_up=4096, ld_gate_up=256, h=4096, ld_h=128, I=128,
                down=4096, ld_down=256, workspace=4096, workspace_bytes=_cuda.gemm_workspace_bytes(8, 2), stream=0)
    args.update(overrides)
    return args


@pytest.mark.parametrize("down_scheme, bad, message", [
    ("w8a8_g-1_sym", {}, "bf16 only"),          # h is written in bf16 only
    ("w4a16_g128_asym", dict(I=0), "I=0"),
    ("w4a16_g128_asym", dict(I=100), "I=100"),
    ("w4a16_g128_asym", dict(ld_gate_up=128), "ld_gate_up=128"),
    ("w4a16_g128_asym", dict(ld_h=64), "ld_h=64"),
    ("w4a16_g128_asym", dict(I=64, ld_gate_up=128, ld_h=64), "k=128 > I=64"),
    ("w4a16_g128_asym", dict(n_groups=2000), "n_groups=2000"),
    ("w4a16_g128_asym", dict(info_gate_up=_cuda.gemm_problems_pack([_record(), _record(out_col=256)])[1]),
     "column 383 >= 2I=256"),
    ("w4a16_g128_asym", dict(h=0), "16-byte aligned"),
    ("w4a16_g128_asym", dict(ld_down=128), "down: ldy=128"),
    ("w4a16_g128_asym", dict(x=(4096, 0, 0, 0, 0, 0, 0, 128)), "gate_up: activations ld=128"),
    ("w4a16_g128_asym", dict(n_groups=0), "n_groups=0"),
    ("w4a16_g128_asym", dict(part="both"), "part="),
])
def test_gemm_fused_layer_bad_input(down_scheme, bad, message):
    """The two-stage launch checks both stages and the act·up step's buffers before any launch."""
    with pytest.raises(ValueError, match=message):
        _cuda.gemm_fused_layer(**_layer_args(down_scheme, **bad))


@pytest.mark.parametrize("value", ["abc", "-1", "6x", ""])
def test_gemm_fused_bad_split_cost(value, monkeypatch):
    """A malformed MXMOE_GEMM_SPLIT_COST is refused before any launch, naming the variable."""
    monkeypatch.setenv("MXMOE_GEMM_SPLIT_COST", value)
    with pytest.raises(ValueError, match="MXMOE_GEMM_SPLIT_COST"):
        _cuda.gemm_fused(**_fused_args())


@pytest.mark.parametrize("part", ["", "ALL", "gemm", "compute "])
def test_gemm_fused_bad_part(part):
    with pytest.raises(ValueError, match="part="):
        _cuda.gemm_fused(**_fused_args(part=part))


def test_gemm_fused_part_checks_like_all():
    """Each half checks its arguments as the whole call does, before any launch."""
    for part in ("schedule", "compute"):
        with pytest.raises(ValueError, match="ldy=64"):
            _cuda.gemm_fused(**_fused_args(ldy=64, part=part))


def test_gemm_fused_int8_needs_scales():
    _, info = _cuda.gemm_problems_pack([_record(scheme="w8a8_g-1_sym", zeros=0)])
    with pytest.raises(ValueError, match="int8 activations"):
        _cuda.gemm_fused(**_fused_args(info=info, acts=(0, 4096, 0, 0, 0, 0, 0, 256)))


def test_gemm_fused_bad_rowsum():
    """The int8 row sums (optional ninth element of acts) must be 4-byte aligned; a longer tuple is refused."""
    _, info = _cuda.gemm_problems_pack([_record(scheme="w8a8_g-1_sym", zeros=0)])
    with pytest.raises(ValueError, match="row-sum buffer"):
        _cuda.gemm_fused(**_fused_args(info=info, acts=(0, 4096, 0, 0, 4096, 0, 0, 256, 4098)))
    with pytest.raises(TypeError, match="acts must be a tuple"):
        _cuda.gemm_fused(**_fused_args(info=info, acts=(0, 4096, 0, 0, 4096, 0, 0, 256, 4096, 0)))


def test_gemm_fused_empty_is_noop():
    _, info = _cuda.gemm_problems_pack([])
    _cuda.gemm_fused(**_fused_args(info=info))  # nothing to do: no device call at all
    _cuda.gemm_fused(**_fused_args(max_rows=0))


def test_gemm_workspace_bytes():
    assert _cuda.gemm_workspace_bytes(0, 0) > 0
    assert _cuda.gemm_workspace_bytes(10, 1024) >= 64 + 36 * 1024
    with pytest.raises(ValueError):
        _cuda.gemm_workspace_bytes(-1, 3)


def test_device_status():
    ok, message = _cuda.device_status()
    assert isinstance(ok, bool) and isinstance(message, str) and message
