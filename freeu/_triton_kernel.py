"""The Triton kernel behind freeu.fused (imported only when a fused block first runs)."""
import triton
import triton.language as tl

try:  # Triton >= 3.4: programmatic dependent launch (sm_90+); freeu.fused uses it only where present
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
    HAS_GDC = True
except ImportError:  # pragma: no cover - older Triton
    HAS_GDC = False

    @triton.jit
    def gdc_wait():
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass


@triton.jit
def _rounded(v, like_ptr):
    """v rounded to the element type of like_ptr and back to fp32 (what a PyTorch op in that
    dtype stores between two operations)."""
    return v.to(like_ptr.dtype.element_ty).to(tl.float32)


@triton.jit
def _mix(coef, a_ptr, b_ptr, PP: tl.constexpr):
    """M = (s-1) (Ar C Br - Ai C Bi) for the coefficient matrix C."""
    k = tl.arange(0, PP)
    sq = k[:, None] * PP + k[None, :]
    ar = tl.load(a_ptr + sq)             # (s - 1) Ar
    ai = tl.load(a_ptr + PP * PP + sq)   # (s - 1) Ai
    br = tl.load(b_ptr + sq)
    bi = tl.load(b_ptr + PP * PP + sq)
    t_r = tl.sum(ar[:, :, None] * coef[None, :, :], axis=1)
    t_i = tl.sum(ai[:, :, None] * coef[None, :, :], axis=1)
    return tl.sum(t_r[:, :, None] * br[None, :, :], axis=1) - tl.sum(t_i[:, :, None] * bi[None, :, :], axis=1)


@triton.jit
def _coefficients(x, er_ptr, ec_ptr, r, rmask, cols, cmask, PP: tl.constexpr):
    """C[a, b] = sum_m Er[m, a] sum_n x[m, n] Ec[n, b] over one tile of rows (2-D temporaries only:
    one weighted row sum per column basis vector)."""
    k = tl.arange(0, PP)
    er = tl.load(er_ptr + r[:, None] * PP + k[None, :], mask=rmask[:, None], other=0.0)  # [BR, PP]
    u = tl.zeros_like(er)
    for b in tl.static_range(PP):
        ec_b = tl.load(ec_ptr + cols * PP + b, mask=cmask, other=0.0)                   # [BW]
        u_b = tl.sum(x * ec_b[None, :], axis=1)                                         # [BR]
        u += tl.where(k[None, :] == b, u_b[:, None], 0.0)
    return tl.sum(er[:, :, None] * u[:, None, :], axis=0)                               # [PP, PP]


@triton.jit
def _correction(v, er_ptr, r, rmask, PP: tl.constexpr):
    """sum_a Er[m, a] V[n, a] for one tile of rows: PP rank-one updates."""
    k = tl.arange(0, PP)
    corr = tl.zeros([r.shape[0], v.shape[0]], dtype=tl.float32)
    for a in tl.static_range(PP):
        er_a = tl.load(er_ptr + r * PP + a, mask=rmask, other=0.0)                        # [BR]
        v_a = tl.sum(tl.where(k[None, :] == a, v, 0.0), axis=1)                          # [BW]
        corr += er_a[:, None] * v_a[None, :]
    return corr


@triton.jit
def _filter_plane(base, er_ptr, ec_ptr, a_ptr, b_ptr, height, width,
                  PP: tl.constexpr, BR: tl.constexpr, BW: tl.constexpr, ONE_TILE: tl.constexpr):
    rows = tl.arange(0, BR)
    cols = tl.arange(0, BW)
    k = tl.arange(0, PP)
    cmask = cols < width
    ec = tl.load(ec_ptr + cols[:, None] * PP + k[None, :], mask=cmask[:, None], other=0.0)  # [BW, PP]
    if ONE_TILE:  # the whole plane in one tile: read it once
        rmask = rows < height
        m2 = rmask[:, None] & cmask[None, :]
        ptrs = base + rows[:, None] * width + cols[None, :]
        x = tl.load(ptrs, mask=m2, other=0.0).to(tl.float32)
        mixed = _mix(_coefficients(x, er_ptr, ec_ptr, rows, rmask, cols, cmask, PP), a_ptr, b_ptr, PP)
        v = tl.sum(ec[:, None, :] * mixed[None, :, :], axis=2)     # [BW, PP]: sum_b Ec[n, b] M[a, b]
        tl.store(ptrs, (x + _correction(v, er_ptr, rows, rmask, PP)).to(base.dtype.element_ty), mask=m2)
    else:
        coef = tl.zeros([PP, PP], dtype=tl.float32)
        for r0 in range(0, height, BR):
            r = r0 + rows
            rmask = r < height
            m2 = rmask[:, None] & cmask[None, :]
            x = tl.load(base + r[:, None] * width + cols[None, :], mask=m2, other=0.0).to(tl.float32)
            coef += _coefficients(x, er_ptr, ec_ptr, r, rmask, cols, cmask, PP)
        mixed = _mix(coef, a_ptr, b_ptr, PP)
        v = tl.sum(ec[:, None, :] * mixed[None, :, :], axis=2)
        for r0 in range(0, height, BR):
            r = r0 + rows
            rmask = r < height
            m2 = rmask[:, None] & cmask[None, :]
            ptrs = base + r[:, None] * width + cols[None, :]
            x = tl.load(ptrs, mask=m2, other=0.0).to(tl.float32)
            tl.store(ptrs, (x + _correction(v, er_ptr, r, rmask, PP)).to(base.dtype.element_ty), mask=m2)


@triton.jit
def _v2_factor(mean_base, idx, mask, hw, lo, span, bm1):
    """1 + (b-1)·(m - min) / (max - min) at elements idx, each step rounded as FreeU_V2's torch ops."""
    m = tl.load(mean_base + idx % hw, mask=mask, other=0.0).to(tl.float32)
    norm = _rounded(tl.math.div_rn(_rounded(m - lo, mean_base), span), mean_base)
    return _rounded(_rounded(norm * bm1, mean_base) + 1.0, mean_base)


@triton.jit
def _scale_plane(base, mean_base, part_ptr, n_parts, start, stop, hw, bscale, bm1, x_early,
                 BLOCK: tl.constexpr, V2: tl.constexpr, PARTS: tl.constexpr, EARLY: tl.constexpr):
    """Scale elements [start, stop) of a sample's backbone half (its planes back to back: the
    pixel of element i is i % hw). EARLY: the piece fits one BLOCK and x_early already holds it."""
    offs = tl.arange(0, BLOCK)
    if V2:
        # The sample's min / max of the mean map from the per-tile extremes _finish_tile left.
        j = tl.arange(0, PARTS)
        pmask = j < n_parts
        lo = tl.min(tl.load(part_ptr + j, mask=pmask, other=float("inf")), axis=0)
        hi = tl.max(tl.load(part_ptr + n_parts + j, mask=pmask, other=float("-inf")), axis=0)
        span = _rounded(hi - lo, mean_base)
        span = tl.where(span == 0.0, 1.0, span)
        if EARLY:
            idx = start + offs
            mask = idx < stop
            factor = _v2_factor(mean_base, idx, mask, hw, lo, span, bm1)
            tl.store(base + idx, (x_early * factor).to(base.dtype.element_ty), mask=mask)
        else:
            for o in range(start, stop, BLOCK):
                idx = o + offs
                mask = idx < stop
                factor = _v2_factor(mean_base, idx, mask, hw, lo, span, bm1)
                x = tl.load(base + idx, mask=mask, other=0.0).to(tl.float32)
                tl.store(base + idx, (x * factor).to(base.dtype.element_ty), mask=mask)
    else:
        for o in range(start, stop, BLOCK):
            idx = o + offs
            mask = idx < stop
            x = tl.load(base + idx, mask=mask, other=0.0).to(tl.float32)
            tl.store(base + idx, (x * bscale).to(base.dtype.element_ty), mask=mask)


@triton.jit
def _window_on(sig_ptr, n_sig, sample, lo_sigma, hi_sigma, GATED: tl.constexpr):
    if GATED:
        sig = tl.load(sig_ptr + sample % n_sig).to(tl.float32)
        on = (sig >= lo_sigma) & (sig <= hi_sigma)
    else:
        on = sample >= 0
    return on


@triton.jit
def _channel_sum(base, sum_ptr, channels, hw, chunk, tile,
                 CHUNK: tl.constexpr, CT: tl.constexpr, SBLOCK: tl.constexpr):
    """Stage 1 of v2's channel mean: fp32 sums of one chunk of CHUNK channels over one tile of
    pixels (sum_ptr points at this sample's and chunk's row)."""
    idx = tile * SBLOCK + tl.arange(0, SBLOCK)
    pmask = idx < hw
    ct = tl.arange(0, CT)
    acc = tl.zeros([SBLOCK], dtype=tl.float32)
    for c0 in range(chunk * CHUNK, chunk * CHUNK + CHUNK, CT):
        c = c0 + ct
        m2 = (c < channels)[:, None] & pmask[None, :]
        x = tl.load(base + c[:, None].to(tl.int64) * hw + idx[None, :], mask=m2, other=0.0)
        acc += tl.sum(x.to(tl.float32), axis=0)
    tl.store(sum_ptr + idx, acc, mask=pmask)


@triton.jit
def _finish_tile(sum_base, mean_base, part_base, n_parts, cnt_ptr, chunks, inv_channels, hw, tile,
                 SBLOCK: tl.constexpr, CT: tl.constexpr):
    """The chunk program that arrives last at this pixel tile (a counter per tile) adds up all the
    tile's chunk sums in a fixed order whoever arrives last, stores the tile of the mean map and its
    min / max, and sets the counter back to zero for the next call. Its acquire makes the other
    programs' stores visible; the loads go around the SM's cache (volatile)."""
    arrived = tl.atomic_add(cnt_ptr, 1, sem="acq_rel")
    if arrived == chunks - 1:
        idx = tile * SBLOCK + tl.arange(0, SBLOCK)
        mask = idx < hw
        k = tl.arange(0, CT)
        acc = tl.zeros([SBLOCK], dtype=tl.float32)
        for g in range(0, chunks, CT):
            m2 = ((g + k) < chunks)[:, None] & mask[None, :]
            rows = (g + k[:, None]).to(tl.int64) * hw
            acc += tl.sum(tl.load(sum_base + rows + idx[None, :], mask=m2, other=0.0, volatile=True), axis=0)
        mean = (acc * inv_channels).to(mean_base.dtype.element_ty)
        tl.store(mean_base + idx, mean, mask=mask)
        m = mean.to(tl.float32)
        tl.store(part_base + tile, tl.min(tl.where(mask, m, float("inf")), axis=0))
        tl.store(part_base + n_parts + tile, tl.max(tl.where(mask, m, float("-inf")), axis=0))
        tl.atomic_xchg(cnt_ptr, 0)


@triton.jit
def freeu_block_kernel(h_ptr, hsp_ptr, mean_ptr, part_ptr, n_parts, sum_ptr, sum_tiles, chunks,
                       er_ptr, ec_ptr, a_ptr, b_ptr, sig_ptr, cnt_ptr, inv_channels,
                       n_sig, filter_planes, sum_programs, c_hsp, half, c_h, height, width,
                       scale_per_sample, piece,
                       bscale, bm1, lo_sigma, hi_sigma,
                       PP: tl.constexpr, BR: tl.constexpr, BW: tl.constexpr, BLOCK: tl.constexpr,
                       GATED: tl.constexpr, V2: tl.constexpr, ONE_TILE: tl.constexpr,
                       PARTS: tl.constexpr, CHUNK: tl.constexpr, CT: tl.constexpr, SBLOCK: tl.constexpr,
                       MAP: tl.constexpr, PDL: tl.constexpr, EARLY: tl.constexpr):
    """Three kinds of programs, in this order: [0, filter_planes) filter one skip plane each; the
    next sum_programs add up one chunk of h's channels over one tile of pixels, and the last of them
    to finish a tile turns the tile's chunk sums into that tile of v2's mean map; the rest scale a
    piece of the backbone. v1 launches the filter and the scaling together; v2 launches the channel
    sums first, then the filter with the scaling that needs the whole map.

    PDL (programmatic dependent launch, sm_90+; v2 only): 1 = the first launch, whose programs let
    the second start at once; 2 = the second launch (made with launch_pdl): its filter programs need
    nothing from the first and run beside it, its scaling programs wait for the map, and no program
    ends before the first launch has (so the kernels after it see both launches done)."""
    if PDL == 1:
        gdc_launch_dependents()
    pid = tl.program_id(0)
    hw = height * width
    is_filter = pid < filter_planes
    q = pid - filter_planes
    is_sum = (q >= 0) & (q < sum_programs)
    qs = q - sum_programs
    per_sample = sum_tiles * chunks
    sample = tl.where(is_filter, pid // c_hsp, tl.where(is_sum, q // tl.maximum(per_sample, 1),
                                                         qs // tl.maximum(scale_per_sample, 1)))
    on = _window_on(sig_ptr, n_sig, sample, lo_sigma, hi_sigma, GATED)  # σ read before any wait
    start = (qs - sample * scale_per_sample) * piece
    stop = tl.minimum(start + piece, half * hw)
    h_base = h_ptr + sample.to(tl.int64) * c_h * hw
    if EARLY:  # v2's scaling programs read their backbone piece while the map is still being built
        idx = start + tl.arange(0, BLOCK)
        ok = tl.where(on, qs >= 0, False)
        x_early = tl.load(h_base + idx, mask=(idx < stop) & ok, other=0.0).to(tl.float32)
    else:
        x_early = 0.0
    if PDL == 2:
        if not is_filter:
            gdc_wait()  # the map and the channel sums read h: the first launch must be done
    if on:
        if is_filter:
            _filter_plane(hsp_ptr + pid.to(tl.int64) * hw, er_ptr, ec_ptr, a_ptr, b_ptr, height, width,
                          PP, BR, BW, ONE_TILE)
        elif is_sum:
            if MAP:  # compiled only for launches that build v2's map
                r = q - sample * per_sample
                tile = r // chunks
                chunk = r - tile * chunks
                sums = sum_ptr + sample.to(tl.int64) * chunks * hw
                _channel_sum(h_ptr + sample.to(tl.int64) * c_h * hw, sums + chunk.to(tl.int64) * hw,
                             c_h, hw, chunk, tile, CHUNK, CT, SBLOCK)
                _finish_tile(sums, mean_ptr + sample.to(tl.int64) * hw, part_ptr + sample.to(tl.int64) * 2 * n_parts,
                             n_parts, cnt_ptr + sample * sum_tiles + tile, chunks, inv_channels, hw, tile, SBLOCK, CT)
        else:
            # the sample's backbone half is contiguous: pieces of `piece` elements across its planes,
            # so small planes share a program and large ones are split
            _scale_plane(h_base, mean_ptr + sample.to(tl.int64) * hw, part_ptr + sample.to(tl.int64) * 2 * n_parts,
                         n_parts, start, stop, hw, bscale, bm1, x_early, BLOCK, V2, PARTS, EARLY)
    if PDL == 2:
        gdc_wait()
