"""Computes the few-bit f' tables and f' ranges shipped in kernels/fewbit_tables.h.

Lossy saved-derivative storage (`derivative="bitsK"` and `derivative="uint8"`)
needs, for every activation whose exact storage keeps f'(x) itself, two
constants computed offline. This script computes them reproducibly (no
randomness: a fixed grid, exact dynamic programming, deterministic ties) and
writes the C++ header the kernels include (kernels/fewbit_tables.h) and the
same numbers as JSON for the Python side (nestad_tf/fewbit_tables.json).

bitsK (K = 1..4), the FewBit idea (Novikov et al., "Few-bit backward: quantized
gradients of activation functions for memory footprint reduction", ICML 2023):
  q(x) = levels[bucket(x)],  bucket(x) = #{k : breakpoints[k] <= x},
  a piecewise-constant f' with L = 2^K levels over contiguous x-intervals,
  chosen to minimise E[(f'(x) - q(x))^2] for x ~ N(0, 1). The kernel then
  keeps only the K-bit bucket index.

  Method:
  1. f'(x) is TF autodiff (float64) of the activation's Keras reference
     (`nestad_tf.registry.get(name).reference`), never a hand-written formula.
  2. The line is cut into cells: [-8, 8] in 4096 cells of width 1/256 (exact
     binary fractions, so every cell edge is exactly a float32), plus the two
     tails (-inf, -8) and [8, inf) as one cell each. A cell's normal mass and
     its first and second moments of f' are integrated with 8-point
     Gauss-Legendre quadrature per cell (against the normal density); a tail
     cell has mass Phi(-8) and f' equal to the limit of f' (f' at x = -+1000).
  3. The optimal partition of the cells into L contiguous segments is found
     exactly by dynamic programming over segment costs
        cost(i, j) = sum_{cells i..j-1} mass * E[(f' - mean_ij)^2 | cell]
                   = S2 - S1^2 / W   (prefix sums of the moments),
     i.e. the mass-weighted within-segment variance (within-cell variance
     included). The level of a segment is its conditional mean E[f' | segment]
     (the optimal constant for squared error); a breakpoint is the left edge of
     a segment. One DP of 16 layers gives L = 2, 4, 8, 16 (K = 1..4).
     Ties resolve to the first minimum (np.argmin): the result is deterministic.
  4. Breakpoints and levels are rounded to float32 (what the kernel uses) and
     the errors are evaluated with the rounded table:
     expected_squared_error by the same quadrature (+ tails); max_abs_error as
     max |f'(x) - q(x)| over a grid of step 1/4096 on [-8, 8], both sides
     (+-1e-9) of every breakpoint (the table's and the activation's kinks), and the limits
     at -+inf (beyond |x| = 8 these six f' approach their limits monotonically,
     so this is the sup over the real line).

uint8: fixed-range quantisation over the activation's f' range [lo, hi] (the
  min and max of f' over the real line, kinks and tails included):
     code = round((f' - lo) / (hi - lo) * 254), 0..254 (255 is reserved for NaN)
     f' ~= lo + code * (hi - lo) / 254
  so the max error is (hi - lo) / 254 / 2 (for f' within [lo, hi]; the kernel
  clamps the code to 0..254 so a float32 f' rounding a hair outside the range
  costs at most that hair). lo and hi come from the 1/4096 grid, both sides of
  the activation's kinks, the limits, and a bounded scalar refinement around
  the grid's extreme points, then rounded outward to float32.

Usage:
  python tools/fewbit_tables.py        # writes kernels/fewbit_tables.h and
                                       # nestad_tf/fewbit_tables.json, prints the errors
  python tools/fewbit_tables.py --output FILE --json-output FILE   # writes elsewhere
  python tools/fewbit_tables.py --check   # exit 1 if a shipped file is stale
"""

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from typing import Dict, List, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402
import scipy.special  # noqa: E402
import tensorflow as tf  # noqa: E402

from nestad_tf import registry  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER_PATH = os.path.join(REPO_ROOT, "kernels", "fewbit_tables.h")
JSON_PATH = os.path.join(REPO_ROOT, "nestad_tf", "fewbit_tables.json")  # nestad_tf/storage.py

# The activations whose exact storage keeps f'(x) (f' is neither a function of y
# nor piecewise constant): (registry name, parameters). Their kernel names come
# from the registry.
ACTIVATIONS: Tuple[Tuple[str, Dict[str, object]], ...] = (
    ("silu", {}),
    ("gelu", {"approximate": False}),
    ("gelu", {"approximate": True}),
    ("mish", {}),
    ("hard_silu", {}),
    ("tanh_shrink", {}),
)
BITS = (1, 2, 3, 4)
MAX_BREAKPOINTS = 15  # the header's array sizes: 2^4 levels
UINT8_MAX_CODE = 254  # 255 is the NaN code

X_LIMIT = 8.0                 # cells cover [-X_LIMIT, X_LIMIT] plus the two tails
CELLS_PER_UNIT = 256          # cell width 1/256: edges exact in float32
QUADRATURE_NODES = 8          # Gauss-Legendre nodes per cell
EVAL_STEPS_PER_UNIT = 4096    # grid for max_abs_error and the f' range
TAIL_PROBE = 1000.0           # f' at -+TAIL_PROBE is its limit at -+inf (float64)
KINK_OFFSET = 1e-9            # one-sided probes at b -+ KINK_OFFSET * max(1, |b|)

METHOD_SUMMARY = (
    "Optimal 2^K-level piecewise-constant f' for x ~ N(0,1) (FewBit): exact DP over "
    f"{int(2 * X_LIMIT * CELLS_PER_UNIT)} cells of [-{X_LIMIT:g}, {X_LIMIT:g}] + 2 tails; "
    "f' ranges for uint8."
)


@dataclasses.dataclass(frozen=True)
class Activation:
    """One activation of the tables: its kernel name and f' (float64 numpy -> numpy)."""

    kernel_name: str
    registry_name: str
    params: Dict[str, object]
    kinks: Tuple[float, ...]

    def derivative(self, x: np.ndarray) -> np.ndarray:
        return derivative_of(self.registry_name, self.params, x)


def derivative_of(registry_name: str, params: Dict[str, object], x: np.ndarray) -> np.ndarray:
    """f'(x) by TF autodiff (float64) of the registry's Keras reference."""
    spec = registry.get(registry_name)
    x = tf.constant(np.asarray(x, dtype=np.float64))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = spec.reference(x, **params)
    d = tape.gradient(y, x).numpy()
    if not np.all(np.isfinite(d)):
        raise ValueError(f"{registry_name}{params}: non-finite f' on the grid")
    return d


def activations() -> List[Activation]:
    result = []
    for name, params in ACTIVATIONS:
        spec = registry.get(name)
        bound = spec.bind(params)
        kernel_name, _ = spec.kernel_attrs(bound)
        result.append(Activation(kernel_name, spec.name, bound,
                                 tuple(float(b) for b in spec.breakpoints(**bound))))
    return result


# --- the discretised problem ---

@dataclasses.dataclass(frozen=True)
class Cells:
    """Cells of the line in order: per cell its normal mass and moments of f'.

    `edges[k]` is the left edge of cell k + 1 (len(edges) == number of cells - 1);
    cell 0 is (-inf, edges[0]), the last cell [edges[-1], inf).
    """

    edges: np.ndarray        # float64, ascending
    mass: np.ndarray         # W: P(x in cell)
    first: np.ndarray        # S1: E[f' ; cell]
    second: np.ndarray       # S2: E[f'^2 ; cell]
    nodes: np.ndarray        # quadrature nodes (all cells of [-X_LIMIT, X_LIMIT])
    node_weights: np.ndarray # normal mass of each node
    node_derivative: np.ndarray
    tail_mass: float
    tail_limits: Tuple[float, float]


def make_cells(activation: Activation, cells_per_unit: int = CELLS_PER_UNIT,
               quadrature_nodes: int = QUADRATURE_NODES) -> Cells:
    """Cells of width 1/cells_per_unit over [-X_LIMIT, X_LIMIT] plus the two tails."""
    inner = int(round(2 * X_LIMIT * cells_per_unit))
    edges = -X_LIMIT + np.arange(inner + 1, dtype=np.float64) / cells_per_unit
    unit_nodes, unit_weights = np.polynomial.legendre.leggauss(quadrature_nodes)
    half_width = 0.5 / cells_per_unit
    centres = 0.5 * (edges[:-1] + edges[1:])
    nodes = (centres[:, None] + half_width * unit_nodes[None, :]).ravel()
    density = np.exp(-0.5 * nodes * nodes) / math.sqrt(2.0 * math.pi)
    weights = (half_width * np.tile(unit_weights, inner)) * density
    derivative = activation.derivative(nodes)
    tail_mass = float(scipy.special.ndtr(-X_LIMIT))
    limits = activation.derivative(np.array([-TAIL_PROBE, TAIL_PROBE]))
    cell_mass = weights.reshape(inner, -1).sum(axis=1)
    cell_first = (weights * derivative).reshape(inner, -1).sum(axis=1)
    cell_second = (weights * derivative * derivative).reshape(inner, -1).sum(axis=1)
    return Cells(
        edges=edges,
        mass=np.concatenate([[tail_mass], cell_mass, [tail_mass]]),
        first=np.concatenate([[tail_mass * limits[0]], cell_first, [tail_mass * limits[1]]]),
        second=np.concatenate([[tail_mass * limits[0] ** 2], cell_second,
                               [tail_mass * limits[1] ** 2]]),
        nodes=nodes,
        node_weights=weights,
        node_derivative=derivative,
        tail_mass=tail_mass,
        tail_limits=(float(limits[0]), float(limits[1])),
    )


def optimal_partitions(mass: np.ndarray, first: np.ndarray, second: np.ndarray,
                       max_segments: int) -> Dict[int, List[int]]:
    """Exact minimum-variance contiguous partitions of weighted cells.

    Args:
      mass, first, second: per cell W, S1 = sum w f', S2 = sum w f'^2.
      max_segments: largest number of segments wanted.
    Returns:
      {segments: [start cell of each segment after the first]} for every
      number of segments 1..max_segments.
    """
    n = len(mass)
    # Centre f' (variance is shift-invariant) so that S2 - S1^2 / W cancels less.
    shift = first.sum() / mass.sum()
    first_c = first - shift * mass
    second_c = second - 2 * shift * first + shift * shift * mass
    # cost[j, i]: cells i..j-1 as one segment (i < j); +inf otherwise. Each row
    # sums backwards from cell j - 1 (no global prefix sums), so the tails' tiny
    # masses stay exact. Row j holds every segment ending at j: the DP below
    # reads rows in blocks (contiguous memory).
    cost = np.full((n + 1, n + 1), np.inf)
    for j in range(1, n + 1):
        w = np.cumsum(mass[j - 1::-1])[::-1]
        s1 = np.cumsum(first_c[j - 1::-1])[::-1]
        s2 = np.cumsum(second_c[j - 1::-1])[::-1]
        cost[j, :j] = np.maximum(s2 - s1 * s1 / w, 0.0)
    if np.isnan(cost).any():
        raise FloatingPointError("NaN segment cost (a cell without mass?)")
    # best[j]: least cost of cells 0..j-1 in `segments` segments; choices[s][j]:
    # the start of the last segment in that optimum.
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    choices = []
    block = 128
    for _ in range(max_segments):
        new_best = np.empty(n + 1)
        choice = np.empty(n + 1, dtype=np.int64)
        for j0 in range(0, n + 1, block):
            total = cost[j0:j0 + block] + best[None, :]
            chosen = np.argmin(total, axis=1)  # first minimum: deterministic ties
            choice[j0:j0 + block] = chosen
            new_best[j0:j0 + block] = total[np.arange(len(chosen)), chosen]
        best = new_best
        choices.append(choice)
    partitions = {}
    for segments in range(1, max_segments + 1):
        starts, end = [], n
        for layer in range(segments - 1, -1, -1):
            end = int(choices[layer][end])
            starts.append(end)
        assert starts[-1] == 0, starts
        partitions[segments] = _canonical(sorted(starts)[1:], mass, first_c, second_c)
    return partitions


def partition_cost(starts: Sequence[int], mass: np.ndarray, first: np.ndarray,
                   second: np.ndarray) -> float:
    """E[(f' - q)^2] of the partition starting new segments at cells `starts`."""
    bounds = [0] + list(starts) + [len(mass)]
    total = 0.0
    for a, b in zip(bounds[:-1], bounds[1:]):
        w, s1, s2 = mass[a:b].sum(), first[a:b].sum(), second[a:b].sum()
        total += max(s2 - s1 * s1 / w, 0.0)
    return total


def _canonical(starts: List[int], mass, first, second) -> List[int]:
    """Of an optimum and its mirror image (x -> -x) when both cost the same, the
    one with the lexicographically smaller breakpoints. silu, gelu, hard_silu
    (f'(-x) = 1 - f'(x)) and tanh_shrink (even f') have such twin optima, and
    rounding alone would otherwise pick one."""
    n = len(mass)
    mirrored = mass[::-1], first[::-1], second[::-1]
    symmetric_grid = np.allclose(mass, mirrored[0], rtol=1e-12, atol=0)
    twin = sorted(n - s for s in starts)
    if not symmetric_grid or twin == starts:
        return starts
    cost = partition_cost(starts, mass, first, second)
    twin_cost = partition_cost(twin, mass, first, second)
    if abs(twin_cost - cost) <= 1e-9 * max(cost, 1e-300):
        return min(starts, twin)
    return starts


# --- tables ---

@dataclasses.dataclass(frozen=True)
class Table:
    activation: str
    bits: int
    breakpoints: np.ndarray  # float32, ascending, 2^bits - 1 of them
    levels: np.ndarray       # float32, 2^bits
    expected_squared_error: float
    max_abs_error: float


def quantized(breakpoints: np.ndarray, levels: np.ndarray, x: np.ndarray) -> np.ndarray:
    """q(x) = levels[number of breakpoints <= x] (the kernel's decoding)."""
    bucket = np.searchsorted(breakpoints.astype(np.float64), x, side="right")
    return levels.astype(np.float64)[bucket]


def evaluation_points(activation: Activation, extra: Sequence[float]) -> np.ndarray:
    """[-8, 8] at step 1/4096, both sides of each kink (and of `extra`), the tail probes."""
    grid = -X_LIMIT + np.arange(int(2 * X_LIMIT * EVAL_STEPS_PER_UNIT) + 1) / EVAL_STEPS_PER_UNIT
    points = [grid, [-TAIL_PROBE, TAIL_PROBE]]
    for b in tuple(activation.kinks) + tuple(extra):
        # Not nextafter: the reference may round x + 3 back onto its kink at 6.
        offset = KINK_OFFSET * max(1.0, abs(b))
        points.append([b - offset, b, b + offset])
    return np.unique(np.concatenate([np.asarray(p, dtype=np.float64) for p in points]))


def make_tables(activation: Activation, cells: Cells, dense: np.ndarray,
                dense_derivative: np.ndarray) -> List[Table]:
    partitions = optimal_partitions(cells.mass, cells.first, cells.second, 2 ** max(BITS))
    tables = []
    for bits in BITS:
        starts = partitions[2 ** bits]
        bounds = [0] + starts + [len(cells.mass)]
        levels = np.array([cells.first[a:b].sum() / cells.mass[a:b].sum()
                           for a, b in zip(bounds[:-1], bounds[1:])])
        # Cell k (k >= 1) starts at edges[k - 1].
        breakpoints = cells.edges[np.array(starts, dtype=np.int64) - 1]
        breakpoints32 = breakpoints.astype(np.float32)
        assert np.array_equal(breakpoints32.astype(np.float64), breakpoints)
        levels32 = levels.astype(np.float32)
        node_error = cells.node_derivative - quantized(breakpoints32, levels32, cells.nodes)
        tail_q = quantized(breakpoints32, levels32, np.array([-np.inf, np.inf]))
        expected = float(np.sum(cells.node_weights * node_error ** 2)
                         + cells.tail_mass * np.sum((np.array(cells.tail_limits) - tail_q) ** 2))
        points = np.concatenate(
            [dense, *[[b - KINK_OFFSET * max(1.0, abs(b)), b] for b in breakpoints]])
        values = np.concatenate([dense_derivative,
                                 activation.derivative(points[len(dense):])])
        max_error = float(np.max(np.abs(values - quantized(breakpoints32, levels32, points))))
        tables.append(Table(activation.kernel_name, bits, breakpoints32, levels32,
                            expected, max_error))
    return tables


def derivative_range(activation: Activation, dense: np.ndarray,
                     dense_derivative: np.ndarray) -> Tuple[np.float32, np.float32]:
    """[lo, hi] of f' over the real line, rounded outward to float32."""
    lo, hi = float(dense_derivative.min()), float(dense_derivative.max())
    step = 1.0 / EVAL_STEPS_PER_UNIT
    for sign, index in ((1.0, int(np.argmin(dense_derivative))),
                        (-1.0, int(np.argmax(dense_derivative)))):
        centre = dense[index]
        if abs(centre) >= TAIL_PROBE:
            continue
        result = scipy.optimize.minimize_scalar(
            lambda t: sign * float(activation.derivative(np.array([t]))[0]),
            bounds=(centre - step, centre + step), method="bounded",
            options={"xatol": 1e-12})
        value = sign * float(result.fun)
        lo, hi = min(lo, value), max(hi, value)
    lo32, hi32 = np.float32(lo), np.float32(hi)
    if float(lo32) > lo:
        lo32 = np.nextafter(lo32, np.float32(-np.inf))
    if float(hi32) < hi:
        hi32 = np.nextafter(hi32, np.float32(np.inf))
    return lo32, hi32


# --- the header ---

def float_literal(value) -> str:
    """Shortest decimal that round-trips the float32 `value`, as a C++ float literal."""
    text = np.format_float_positional(np.float32(value), unique=True, trim="0")
    if text in ("0.0", "-0.0"):
        return "0.0f"
    return text + "f"


def stated_error(value: float) -> float:
    """An error statistic as the files state it: 10 significant digits. Its last bits come
    from float64 sums whose rounding differs between CPUs (numpy's SIMD paths), and the
    shipped files must be the script's output on every machine."""
    return float(f"{float(value):.10g}")


def double_literal(value: float) -> str:
    return repr(stated_error(value))


def render_header(tables: Sequence[Table],
                  ranges: Sequence[Tuple[str, np.float32, np.float32]]) -> str:
    table_lines = []
    for t in tables:
        breakpoints = ", ".join(float_literal(b) for b in t.breakpoints)
        levels = ", ".join(float_literal(v) for v in t.levels)
        table_lines.append(
            f'    {{"{t.activation}", {t.bits}, {2 ** t.bits},\n'
            f"     {{{breakpoints}}},\n"
            f"     {{{levels}}},\n"
            f"     {double_literal(t.expected_squared_error)}, "
            f"{double_literal(t.max_abs_error)}}},"
        )
    range_lines = [f'    {{"{name}", {float_literal(lo)}, {float_literal(hi)}}},'
                   for name, lo, hi in ranges]
    return "\n".join([
        f"// Generated by tools/fewbit_tables.py; do not edit. {METHOD_SUMMARY}",
        "#ifndef NESTAD_KERNELS_FEWBIT_TABLES_H_",
        "#define NESTAD_KERNELS_FEWBIT_TABLES_H_",
        "namespace nestad {",
        "struct QuantizedDerivativeTable {",
        "  const char* activation;  // kernel name (kernels/activations.def)",
        "  int bits;                // 1..4",
        "  int num_levels;          // 2^bits",
        "  float breakpoints[15];   // ascending; bucket = number of breakpoints <= x"
        " (num_levels - 1 used)",
        "  float levels[16];        // f' of each bucket",
        "  double expected_squared_error;  // E[(f'(x) - q(x))^2], x ~ N(0, 1)",
        "  double max_abs_error;           // max |f'(x) - q(x)| over the real line",
        "};",
        "struct DerivativeRange {",
        "  const char* activation;",
        "  float lo, hi;            // min and max of f' over the real line",
        "};",
        "inline constexpr QuantizedDerivativeTable kQuantizedDerivativeTables[] = {",
        *table_lines,
        "};",
        "inline constexpr DerivativeRange kDerivativeRanges[] = {",
        *range_lines,
        "};",
        "}  // namespace nestad",
        "#endif  // NESTAD_KERNELS_FEWBIT_TABLES_H_",
        "",
    ])


_TABLE_ENTRY = re.compile(
    r'\{"(\w+)", (\d+), (\d+),\s*\{([^}]*)\},\s*\{([^}]*)\},\s*([^,\s]+), ([^,}\s]+)\},')
_RANGE_ENTRY = re.compile(r'\{"(\w+)", ([^,\s]+)f, ([^,}\s]+)f\},')


def parse_header(text: str):
    """The (tables, ranges) written in a header produced by `render_header`."""
    tables_text, ranges_text = text.split("kDerivativeRanges[]")
    tables_text = tables_text.split("kQuantizedDerivativeTables[]")[1]

    def floats(values):
        return np.array([np.float32(v.strip().rstrip("f")) for v in values.split(",")],
                        dtype=np.float32)

    tables = [Table(m[1], int(m[2]), floats(m[4]), floats(m[5]), float(m[6]), float(m[7]))
              for m in _TABLE_ENTRY.finditer(tables_text)]
    ranges = [(m[1], np.float32(m[2]), np.float32(m[3]))
              for m in _RANGE_ENTRY.finditer(ranges_text)]
    return tables, ranges


def render_json(tables: Sequence[Table],
                ranges: Sequence[Tuple[str, np.float32, np.float32]]) -> str:
    """The same numbers for the Python side (float32 values written exactly)."""
    document = {
        "generated_by": "tools/fewbit_tables.py",
        "method": METHOD_SUMMARY,
        "tables": [
            {"activation": t.activation, "bits": t.bits, "num_levels": 2 ** t.bits,
             "breakpoints": [float(b) for b in t.breakpoints],
             "levels": [float(v) for v in t.levels],
             "expected_squared_error": stated_error(t.expected_squared_error),
             "max_abs_error": stated_error(t.max_abs_error)}
            for t in tables
        ],
        "ranges": [{"activation": name, "lo": float(lo), "hi": float(hi),
                    "uint8_max_abs_error": (float(hi) - float(lo)) / UINT8_MAX_CODE / 2}
                   for name, lo, hi in ranges],
    }
    return json.dumps(document, indent=1) + "\n"


def compute(verbose: bool = True):
    """Returns (tables, ranges) for every activation of ACTIVATIONS."""
    all_tables, ranges = [], []
    for activation in activations():
        cells = make_cells(activation)
        dense = evaluation_points(activation, ())
        dense_derivative = activation.derivative(dense)
        tables = make_tables(activation, cells, dense, dense_derivative)
        lo, hi = derivative_range(activation, dense, dense_derivative)
        all_tables += tables
        ranges.append((activation.kernel_name, lo, hi))
        if verbose:
            step = (float(hi) - float(lo)) / UINT8_MAX_CODE
            magnitude = max(abs(float(lo)), abs(float(hi)))
            print(f"{activation.kernel_name}: f' in [{float(lo):.6f}, {float(hi):.6f}]; "
                  f"uint8 max error {step / 2:.3e} (E[err^2] ~ {step * step / 12:.2e}); "
                  f"bfloat16 max error {magnitude * 2.0 ** -9:.3e}")
            for t in tables:
                print(f"  bits{t.bits}: E[(f'-q)^2] = {t.expected_squared_error:.3e}, "
                      f"max |f'-q| = {t.max_abs_error:.4f}")
    return all_tables, ranges


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=HEADER_PATH, help="C++ header to write")
    parser.add_argument("--json-output", default=JSON_PATH, help="JSON copy to write")
    parser.add_argument("--check", action="store_true",
                        help="compare with the shipped files instead of writing them")
    args = parser.parse_args(argv)
    tables, ranges = compute(verbose=True)
    outputs = {args.output: render_header(tables, ranges),
               args.json_output: render_json(tables, ranges)}
    if args.check:
        stale = []
        for path, text in ((HEADER_PATH, outputs[args.output]),
                           (JSON_PATH, outputs[args.json_output])):
            if not os.path.exists(path) or open(path).read() != text:
                stale.append(path)
        for path in stale:
            print(f"{path} is stale: run python tools/fewbit_tables.py")
        if not stale:
            print("kernels/fewbit_tables.h and nestad_tf/fewbit_tables.json are up to date")
        return 1 if stale else 0
    for path, text in outputs.items():
        with open(path, "w") as f:
            f.write(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
