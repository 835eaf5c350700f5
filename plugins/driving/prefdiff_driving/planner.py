"""A vectorised lattice planner that drives the ego through a BEV scene and scores its plans.

Candidates are a Frenet lattice along the route (Werling et al., "Optimal
Trajectory Generation for Dynamic Street Scenarios in a Frenet Frame", ICRA
2010): every combination of a lateral offset, reached with a quintic
smoothstep, and a constant-acceleration speed profile from the ego's speed.
Each candidate is simulated against the scene's agents, every occupied cell of
the agent raster moving at its cell's velocity, and scored in the form of
NAVSIM's PDM score (Dauner et al., NeurIPS 2024 Datasets and Benchmarks, eq. 1):

    score = NC x DAC x (5 EP + 5 TTC + 2 C) / 12

with NC no collision, DAC drivable-area compliance, EP ego progress relative
to the best collision-free, compliant candidate (1 when that is under 5 m, as
in NAVSIM), TTC no time-to-collision under the configured look-ahead at
constant velocity, C comfort within nuPlan's thresholds. Simplifications,
stated: every collision counts (NAVSIM counts at-fault ones only), the ego
is a row of discs, agents are the raster's occupied cells.

All tensors carry the batch; nothing loops over scenes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefdiff_driving import bev


@dataclass(frozen=True)
class PlannerConfig:
    """What the planner tries and how strictly it judges."""

    horizon: float = 3.0
    """Seconds simulated."""
    dt: float = 0.25
    """Simulation step in seconds."""
    offsets: tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0, 2.0)
    """Lateral offsets from the route, metres (positive: left)."""
    accelerations: tuple[float, ...] = (-4.0, -2.0, -1.0, 0.0, 1.0)
    """Constant longitudinal accelerations, m/s^2."""
    lateral_time: float = 2.0
    """Seconds to reach a lateral offset."""
    max_speed: float = 15.0
    ego_length: float = 4.5
    ego_radius: float = 1.0
    """Radius of each disc of the ego's footprint."""
    ego_circles: int = 3
    agent_radius: float = 0.25
    """Added to the ego's radius for an agent cell (cells are already grown by half a cell)."""
    ttc_lookahead: tuple[float, ...] = (0.5, 1.0)
    """Constant-velocity look-ahead times of the TTC check, seconds."""
    drivable_threshold: float = 0.5
    """Minimum drivable-area fraction of a cell the ego's discs may stand on."""
    max_agent_cells: int = 96
    """Occupied cells considered per scene, nearest the ego first."""
    weights: tuple[float, float, float] = (5.0, 5.0, 2.0)
    """Weights of progress, TTC and comfort (NAVSIM)."""
    # nuPlan's comfort thresholds, as NAVSIM uses them
    max_lon_accel: float = 2.40
    min_lon_accel: float = -4.05
    max_abs_lat_accel: float = 4.89
    max_abs_jerk: float = 4.13
    max_abs_yaw_rate: float = 0.95

    @property
    def steps(self) -> int:
        return int(round(self.horizon / self.dt))


TRAINING = PlannerConfig()
JUDGE = PlannerConfig(horizon=4.0, dt=0.2, offsets=(-1.5, -0.75, 0.0, 0.75, 1.5),
                      accelerations=(-3.0, -1.5, -0.5, 0.0, 0.5, 1.0), ego_radius=1.2, ego_circles=4,
                      agent_radius=0.4, ttc_lookahead=(0.5, 1.0, 1.5), drivable_threshold=0.6,
                      max_agent_cells=128)
"""The held-out judge: longer horizon, another lattice, a bigger ego and a longer TTC look-ahead."""


def agent_cells(samples: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Occupied cells of agent rasters ``[B, 4, R, R]``: positions ``[B, N, 2]``, velocities
    ``[B, N, 2]`` (m, m/s, ego frame) and a validity mask ``[B, N]``, nearest the ego first."""
    b, _, r, _ = samples.shape
    centres = torch.from_numpy(bev.cell_centres(r)).to(samples).reshape(1, r * r, 2)
    occupied = ((samples[:, bev.VEHICLE] > bev.OCCUPIED) | (samples[:, bev.PEDESTRIAN] > bev.OCCUPIED)).reshape(b, r * r)
    dist = centres.norm(dim=-1).expand(b, -1).masked_fill(~occupied, float("inf"))
    n = min(limit, r * r)
    order = dist.topk(n, dim=1, largest=False).indices
    valid = torch.gather(occupied, 1, order)
    pos = centres.expand(b, -1, -1).gather(1, order[..., None].expand(-1, -1, 2))
    vel = samples[:, bev.VX:bev.VY + 1].reshape(b, 2, r * r).transpose(1, 2).clamp(-1, 1) * bev.SPEED_SCALE
    vel = vel.gather(1, order[..., None].expand(-1, -1, 2))
    return pos, vel, valid


def candidates(route: torch.Tensor, speed: torch.Tensor, cfg: PlannerConfig) -> dict[str, torch.Tensor]:
    """The lattice for every scene: positions ``[B, K, T+1, 2]``, headings, speeds and progress."""
    b = route.shape[0]
    t = torch.arange(cfg.steps + 1, dtype=route.dtype, device=route.device) * cfg.dt        # [T+1]
    acc = torch.tensor(cfg.accelerations, dtype=route.dtype, device=route.device)
    off = torch.tensor(cfg.offsets, dtype=route.dtype, device=route.device)
    v = (speed.reshape(b, 1, 1) + acc.reshape(1, -1, 1) * t).clamp(0, cfg.max_speed)        # [B, A, T+1]
    s = torch.cat([torch.zeros_like(v[..., :1]), torch.cumsum((v[..., 1:] + v[..., :-1]) / 2 * cfg.dt, -1)], -1)
    u = (t / cfg.lateral_time).clamp(max=1.0)
    d = off.reshape(-1, 1) * (10 * u ** 3 - 15 * u ** 4 + 6 * u ** 5)                      # [O, T+1]
    # every (offset, acceleration) pair: K = O * A
    s = s[:, None].expand(-1, len(off), -1, -1).reshape(b, -1, cfg.steps + 1)
    v = v[:, None].expand(-1, len(off), -1, -1).reshape(b, -1, cfg.steps + 1)
    d = d[None, :, None].expand(b, -1, len(acc), -1).reshape(b, -1, cfg.steps + 1)
    seg = route[:, 1:] - route[:, :-1]                                                      # [B, P-1, 2]
    length = seg.norm(dim=-1).clamp_min(1e-6)
    cum = torch.cat([torch.zeros_like(length[:, :1]), torch.cumsum(length, 1)], 1)          # [B, P]
    idx = (torch.searchsorted(cum.contiguous(), s.reshape(b, -1).contiguous(), right=True) - 1)
    idx = idx.clamp(0, seg.shape[1] - 1)                                                    # [B, K*(T+1)]
    start = route.gather(1, idx[..., None].expand(-1, -1, 2))
    direction = (seg / length[..., None]).gather(1, idx[..., None].expand(-1, -1, 2))
    along = s.reshape(b, -1) - cum.gather(1, idx)
    normal = torch.stack([-direction[..., 1], direction[..., 0]], -1)
    pos = start + direction * along[..., None] + normal * d.reshape(b, -1)[..., None]
    pos = pos.reshape(b, -1, cfg.steps + 1, 2)
    step = pos[:, :, 1:] - pos[:, :, :-1]
    tangent = direction.reshape(b, -1, cfg.steps + 1, 2)
    moving = step.norm(dim=-1, keepdim=True) > 1e-3
    heading_vec = torch.where(moving, step, tangent[:, :, 1:])
    heading = torch.atan2(heading_vec[..., 1], heading_vec[..., 0])
    heading = torch.cat([torch.atan2(tangent[:, :, :1, 1], tangent[:, :, :1, 0]), heading], -1)
    return {"pos": pos, "heading": heading, "speed": v, "progress": s[..., -1], "t": t}


def _discs(pos: torch.Tensor, heading: torch.Tensor, cfg: PlannerConfig) -> torch.Tensor:
    """Ego footprint disc centres ``[..., C, 2]``."""
    along = torch.linspace(-0.5, 0.5, cfg.ego_circles, dtype=pos.dtype, device=pos.device)
    along = along * (cfg.ego_length - 2 * cfg.ego_radius) if cfg.ego_circles > 1 else along * 0
    h = torch.stack([heading.cos(), heading.sin()], -1)
    return pos[..., None, :] + along[:, None] * h[..., None, :]


def _hits(discs: torch.Tensor, agents: torch.Tensor, valid: torch.Tensor, radius: float) -> torch.Tensor:
    """Whether any disc ``[B, K, T, C, 2]`` comes within ``radius`` of a valid agent ``[B, N, T, 2]``: ``[B, K, T]``."""
    b, k, t, c, _ = discs.shape
    a = agents.masked_fill(~valid[..., None, None], 1e6).transpose(1, 2)                    # [B, T, N, 2]
    e = discs.permute(0, 2, 1, 3, 4).reshape(b, t, k * c, 2)                               # [B, T, K*C, 2]
    near = (torch.cdist(e, a).amin(-1) < radius).reshape(b, t, k, c).any(-1)               # [B, T, K]
    return near.transpose(1, 2)


def score_scenes(samples: torch.Tensor, cond: dict[str, torch.Tensor],
                 cfg: PlannerConfig = TRAINING) -> dict[str, torch.Tensor]:
    """Run the planner in each scene. Returns per scene the best plan's ``score`` in [0, 1],
    its index ``best`` into the lattice, the lattice ``plans`` ``[B, K, T+1, 2]`` and the
    per-candidate terms ``nc``, ``dac``, ``ep``, ``ttc``, ``comfort``, ``scores``."""
    samples = samples.detach().float()
    layout = cond["layout"].detach().float().to(samples.device)
    route = cond["route"].detach().float().to(samples.device)
    speed = cond["speed"].detach().float().to(samples.device)
    b = samples.shape[0]
    lat = candidates(route, speed, cfg)
    pos, heading, v, t = lat["pos"], lat["heading"], lat["speed"], lat["t"]
    discs = _discs(pos, heading, cfg)                                                       # [B, K, T+1, C, 2]
    apos, avel, valid = agent_cells(samples, cfg.max_agent_cells)
    radius = cfg.ego_radius + cfg.agent_radius
    agents_t = apos[:, :, None] + avel[:, :, None] * t[:, None]                             # [B, N, T+1, 2]
    nc = ~_hits(discs, agents_t, valid, radius).any(-1)
    # drivable-area compliance: every disc centre on the grid stands on a drivable cell
    cells = bev.ego_to_cell(discs, samples.shape[-1])
    flat = cells[..., 0] * samples.shape[-1] + cells[..., 1]
    drivable = layout[:, bev.DRIVABLE].reshape(b, -1)
    on = torch.gather(drivable, 1, flat.reshape(b, -1)).reshape(flat.shape) >= cfg.drivable_threshold
    dac = (on | ~bev.inside_grid(discs)).all(-1).all(-1)
    # TTC: the ego and the agents projected forward at constant velocity
    vel = torch.stack([heading.cos(), heading.sin()], -1) * v[..., None]
    ttc_hit = torch.zeros_like(nc)
    for ahead in cfg.ttc_lookahead:
        future = _discs(pos + vel * ahead, heading, cfg)
        ttc_hit |= _hits(future, agents_t + avel[:, :, None] * ahead, valid, radius).any(-1)
    ttc = ~ttc_hit
    # comfort from the simulated motion (finite differences)
    acc = (v[..., 1:] - v[..., :-1]) / cfg.dt
    jerk = (acc[..., 1:] - acc[..., :-1]) / cfg.dt
    dpsi = torch.atan2(torch.sin(heading[..., 1:] - heading[..., :-1]), torch.cos(heading[..., 1:] - heading[..., :-1]))
    yaw_rate = dpsi / cfg.dt
    lat_acc = yaw_rate * v[..., 1:]
    comfort = ((acc <= cfg.max_lon_accel + 1e-6) & (acc >= cfg.min_lon_accel - 1e-6)).all(-1)
    comfort &= (jerk.abs() <= cfg.max_abs_jerk + 1e-6).all(-1) if jerk.shape[-1] else comfort
    comfort &= (yaw_rate.abs() <= cfg.max_abs_yaw_rate).all(-1) & (lat_acc.abs() <= cfg.max_abs_lat_accel).all(-1)
    gate = (nc & dac).float()
    progress = lat["progress"]
    best_progress = (progress * gate).amax(-1, keepdim=True)
    ep = torch.where(best_progress < 5.0, torch.ones_like(progress), progress / best_progress.clamp_min(1e-6))
    w_ep, w_ttc, w_c = cfg.weights
    scores = gate * (w_ep * ep + w_ttc * ttc.float() + w_c * comfort.float()) / (w_ep + w_ttc + w_c)
    score, best = scores.max(-1)
    return {"score": score, "best": best, "plans": pos, "scores": scores, "nc": nc, "dac": dac, "ep": ep,
            "ttc": ttc, "comfort": comfort}


def soft_feasibility(samples: torch.Tensor, cond: dict[str, torch.Tensor], cfg: PlannerConfig = TRAINING,
                     sharpness: float = 16.0, sigma: float = 1.5) -> torch.Tensor:
    """A differentiable surrogate of the planner's score, for reward backpropagation only.

    The ego follows the route at constant speed (the lattice's centre plan);
    every cell contributes its soft occupancy (a sigmoid of the raster) times a
    Gaussian of its distance to the ego as the cell moves at its soft velocity;
    vehicles off the drivable area add a penalty. The score is
    ``exp(-(collision energy + off-road mass))`` in (0, 1]. It is not the PDM
    score: the benchmark judges with the discrete planner.
    """
    b, _, r, _ = samples.shape
    route, speed = cond["route"].to(samples), cond["speed"].to(samples)
    lat = candidates(route, speed, PlannerConfig(horizon=cfg.horizon, dt=0.5, offsets=(0.0,), accelerations=(0.0,)))
    ego = lat["pos"][:, 0]                                                                  # [B, T+1, 2]
    t = lat["t"]
    occ_v = torch.sigmoid(sharpness * (samples[:, bev.VEHICLE] - bev.OCCUPIED))
    occ_p = torch.sigmoid(sharpness * (samples[:, bev.PEDESTRIAN] - bev.OCCUPIED))
    occ = (1 - (1 - occ_v) * (1 - occ_p)).reshape(b, -1)                                     # [B, R*R]
    centres = torch.from_numpy(bev.cell_centres(r)).to(samples).reshape(1, -1, 1, 2)
    vel = samples[:, bev.VX:bev.VY + 1].reshape(b, 2, -1).transpose(1, 2)[:, :, None] * bev.SPEED_SCALE
    moving = centres + vel * t.reshape(1, 1, -1, 1)                                         # [B, R*R, T+1, 2]
    d2 = (moving - ego[:, None]).square().sum(-1)
    energy = (occ[..., None] * torch.exp(-d2 / (2 * sigma ** 2))).sum(1).mean(-1)
    offroad = (occ_v * (1 - cond["layout"][:, bev.DRIVABLE].to(samples))).sum((1, 2)) / 10.0
    return torch.exp(-(energy + offroad))
