"""Scripted experts for the robosuite tasks: waypoints computed from privileged object poses.

Each expert is a small phase machine (above the grasp point, down, close, lift, carry, down,
open, retreat) whose waypoints are recomputed every step from the object's pose in
``env.raw_obs``, and a proportional servo that turns a waypoint into an OSC_POSE action (position
delta capped in speed, top-down orientation at a chosen yaw, gripper open/closed). The demos are
therefore smooth and single-mode, unlike Robomimic's human demonstrations.

Pitfalls handled here: the Panda's fingers close along the grip site's x axis (the yaw is chosen
for that axis); the grasp yaw among the symmetric choices keeps the wrist joint (q7, which turns
opposite to the gripper yaw) inside its limit for the whole episode; the square nut is rotated
while carried so that its handle never points away from the robot (the peg sits near the edge of
the reach); Can's target is near the edge of the reach, so the can is placed in the target bin
quadrant's corner nearest the robot.
"""

from __future__ import annotations

import numpy as np

__all__ = ["make_expert", "ScriptedExpert"]

POS_SCALE = 0.05
"""Metres per unit of position action (OSC_POSE output limit)."""
ROT_SCALE = 0.5
"""Radians per unit of rotation action."""
GAIN = 3.0
"""Proportional gain on the pose error (in action units)."""
Q7_LIMIT = 2.6
"""Wrist joint limit used when choosing a yaw (the joint's range is +-2.9 rad)."""
OPEN, CLOSE = -1.0, 1.0


def _wrap(a: float) -> float:
    """Angle in (-pi, pi]."""
    return float((a + np.pi) % (2 * np.pi) - np.pi)


def _yaw(xmat: np.ndarray) -> float:
    """Yaw of the grip site: the angle of its x axis (the finger-closing axis) in the xy plane."""
    x = np.asarray(xmat).reshape(3, 3)[:, 0]
    return float(np.arctan2(x[1], x[0]))


def _quat_yaw(q: np.ndarray) -> float:
    """Rotation about world z of a body with quaternion ``q`` (wxyz)."""
    w, x, y, z = q
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


def _down(yaw: float) -> np.ndarray:
    """Grip site rotation pointing down (z = -world z) with its x axis at ``yaw``."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, -1.0]])


def _rotvec(r: np.ndarray) -> np.ndarray:
    """Axis-angle vector of a rotation matrix (angle in [0, pi])."""
    import mujoco

    q, v = np.zeros(4), np.zeros(3)
    mujoco.mju_mat2Quat(q, r.reshape(-1))
    if q[0] < 0:
        q = -q
    mujoco.mju_quat2Vel(v, q, 1.0)
    return v


class ScriptedExpert:
    """Waypoint expert for one task; ``reset()`` before each episode, then ``get_action(raw_obs)``."""

    def __init__(self, task: str, speed: float = 1.0, fine_speed: float = 0.4, yaw_tol: float = 0.08) -> None:
        if task not in ("lift", "can", "square"):
            raise ValueError(f"no scripted robosuite expert for {task!r}; known: lift, can, square")
        self.task, self.speed, self.fine_speed, self.yaw_tol = task, speed, fine_speed, yaw_tol
        self.reset()

    def reset(self) -> None:
        """Start a new episode (the plan is made from the first observation)."""
        self.phase, self.t, self.plan = 0, 0, None
        self._last_obj: np.ndarray | None = None
        self.obj_speed = 0.0
        """How far the object moved in the last step (metres)."""

    # ------------------------------------------------------------------ servo
    def _servo(self, raw: dict, target: np.ndarray, yaw: float, grip: float, speed: float | None = None) -> np.ndarray:
        """Proportional action towards ``target`` / ``yaw``; the position part's norm is capped at ``speed``.

        OSC_POSE moves the hand only part of the way to its goal (eef + action * 5 cm) in one
        control step, so the error is multiplied by :data:`GAIN` before the cap.
        """
        dp = GAIN * (np.asarray(target, dtype=np.float64) - raw["robot0_eef_pos"]) / POS_SCALE
        cap = self.speed if speed is None else speed
        n = np.linalg.norm(dp)
        if n > cap:
            dp *= cap / n
        rot = GAIN * _rotvec(_down(yaw) @ raw["grip_xmat"].reshape(3, 3).T) / ROT_SCALE
        return np.concatenate([np.clip(dp, -1, 1), np.clip(rot, -1, 1), [grip]])

    def _at(self, raw: dict, target: np.ndarray, yaw: float, tol: float) -> bool:
        err = np.linalg.norm(np.asarray(target) - raw["robot0_eef_pos"])
        return bool(err < tol and abs(_wrap(_yaw(raw["grip_xmat"]) - yaw)) < self.yaw_tol)

    def _yaw_choice(self, raw: dict, candidates: list[float], then: float = 0.0) -> float:
        """The candidate yaw closest to the current one whose wrist angle (and after turning ``then``) stays in range."""
        now = _yaw(raw["grip_xmat"])
        q7 = float(raw["robot0_joint_pos"][6])
        best, best_cost = None, np.inf
        for c in candidates:
            d = _wrap(c - now)
            q_grasp, q_end = q7 - d, q7 - d - then  # q7 turns opposite to the yaw
            if abs(q_grasp) > Q7_LIMIT or abs(q_end) > Q7_LIMIT:
                continue
            if abs(d) < best_cost:
                best, best_cost = now + d, abs(d)
        return best if best is not None else now

    def _square_yaw(self, raw: dict, theta: float) -> tuple[float, float]:
        """Grasp yaw (fingers across the handle) and the turn that leaves the handle pointing towards the robot.

        The handle's end angle must have cos <= -0.5 (towards the robot, -x, within 60 degrees); among the end
        angles and both turning directions, the cheapest plan whose wrist angle stays in range wins.
        """
        ends = [theta] if np.cos(theta) <= -0.5 else [np.pi - np.pi / 3, np.pi + np.pi / 3]
        now, q7 = _yaw(raw["grip_xmat"]), float(raw["robot0_joint_pos"][6])
        best, best_cost = (now, 0.0), np.inf
        for end in ends:
            short = _wrap(end - theta)
            for turn in (short, short - np.sign(short) * 2 * np.pi) if short else (0.0,):
                for k in (1, -1):
                    d = _wrap(theta + k * np.pi / 2 - now)
                    if abs(q7 - d) > Q7_LIMIT or abs(q7 - d - turn) > Q7_LIMIT:
                        continue
                    if abs(d) + abs(turn) < best_cost:
                        best, best_cost = (now + d, turn), abs(d) + abs(turn)
        return best

    # ------------------------------------------------------------------ phases
    def get_action(self, raw: dict) -> np.ndarray:
        """The 7-D action (clipped to [-1, 1]) for the current privileged observation."""
        if self.plan is None:
            self.plan = self._make_plan(raw)
        if self._last_obj is not None:
            self.obj_speed = float(np.linalg.norm(raw["object_pos"] - self._last_obj))
        self._last_obj = np.array(raw["object_pos"], dtype=np.float64)
        for _ in range(len(self.plan)):  # advance through finished phases (at most one pass)
            name, target, yaw, grip, done = self.plan[min(self.phase, len(self.plan) - 1)]
            tgt = target(raw)
            if self.phase < len(self.plan) - 1 and done(raw, tgt, yaw, self.t):
                self.phase, self.t = self.phase + 1, 0
                continue
            break
        self.t += 1
        speed = self.fine_speed if name in ("down", "place") else None
        return self._servo(raw, tgt, yaw, grip, speed).astype(np.float32)

    def _make_plan(self, raw: dict) -> list:
        """Phases ``(name, target(raw) -> xyz, yaw, gripper, done(raw, target, yaw, t) -> bool)``."""
        obj = raw["object_pos"]
        theta = _quat_yaw(raw["object_quat"])

        def reached(tol: float, max_t: int = 80):
            return lambda r, tgt, yaw, t: self._at(r, tgt, yaw, tol) or t >= max_t

        def waited(n: int):
            return lambda r, tgt, yaw, t: t >= n

        def closed(r, tgt, yaw, t):  # the fingers stopped moving (on the object, or shut)
            return t >= 20 or (t >= 4 and float(np.abs(r["robot0_gripper_qvel"]).max()) < 0.01)

        def above(dz: float, offset=lambda r: np.zeros(3)):
            return lambda r: r["object_pos"] + offset(r) + np.array([0.0, 0.0, dz])

        if self.task == "lift":
            yaw = self._yaw_choice(raw, [theta + k * np.pi / 2 for k in range(4)])
            lift_z = obj[2] + 0.2
            return [
                ("above", above(0.08), yaw, OPEN, reached(0.01)),
                ("down", above(0.0), yaw, OPEN, reached(0.006, 40)),
                ("close", above(0.0), yaw, CLOSE, closed),
                ("lift", lambda r: np.array([*r["robot0_eef_pos"][:2], lift_z]), yaw, CLOSE, waited(10**9)),
            ]
        carry_z = 1.05
        if self.task == "can":
            yaw = _yaw(raw["grip_xmat"])
            place = raw["goal_pos"][:2] + np.array([-0.04, -0.05])  # quadrant corner nearest the robot
            rest_z = 0.875  # can centre just above the bin floor (0.82 + half height 0.041)

            def over_goal(r):
                return np.array([*place, carry_z])

            def lowered(r):
                return np.array([*place, r["robot0_eef_pos"][2] + rest_z - r["object_pos"][2]])

            return [
                ("above", above(0.10), yaw, OPEN, reached(0.01)),
                ("down", above(0.0), yaw, OPEN, reached(0.006, 40)),
                ("close", above(0.0), yaw, CLOSE, closed),
                ("lift", lambda r: np.array([*r["robot0_eef_pos"][:2], carry_z]), yaw, CLOSE, reached(0.03)),
                ("carry", over_goal, yaw, CLOSE, reached(0.015, 120)),
                ("place", lowered, yaw, CLOSE, reached(0.01, 40)),
                ("open", lambda r: r["robot0_eef_pos"], yaw, OPEN, waited(5)),
                ("retreat", lambda r: np.array([*place, carry_z]), yaw, OPEN, waited(10**9)),
            ]
        # square: grasp the handle across its width, turn the handle towards the robot while carrying
        yaw, turn = self._square_yaw(raw, theta)
        handle = 0.054

        def handle_offset(r):
            th = _quat_yaw(r["object_quat"])
            return handle * np.array([np.cos(th), np.sin(th), 0.0])

        peg = raw["goal_pos"]
        hover_z = peg[2] + 0.135  # the nut (2 cm thick) 2.5 cm above the peg top (peg: 0.1 half height)

        def nut_at(z: float, gated: bool = False):
            """Hand target that brings the nut's centre over the peg at height z (gated: lower only when over it)."""

            def target(r):
                err = peg[:2] - r["object_pos"][:2]
                dz = z - r["object_pos"][2] if not gated or np.linalg.norm(err) < 0.005 else 0.0
                return r["robot0_eef_pos"] + np.array([*err, dz])

            return target

        def nut_over_peg(r, tgt, yaw_, t):  # hole over the peg (0.7 cm clearance a side), at rest, above its top
            err = np.linalg.norm(r["object_pos"][:2] - peg[:2]) + abs(r["object_pos"][2] - hover_z)
            still = self.obj_speed < 0.002
            return bool(err < 0.006 and still and abs(_wrap(_yaw(r["grip_xmat"]) - yaw_)) < self.yaw_tol) or t >= 150

        def nut_down(r, tgt, yaw_, t):
            return bool(r["object_pos"][2] < 0.85) or t >= 60

        return [
            ("above", above(0.08, handle_offset), yaw, OPEN, reached(0.01)),
            ("down", above(0.0, handle_offset), yaw, OPEN, reached(0.006, 40)),
            ("close", above(0.0, handle_offset), yaw, CLOSE, closed),
            ("lift", lambda r: np.array([*r["robot0_eef_pos"][:2], carry_z]), yaw, CLOSE, reached(0.03)),
            ("carry", nut_at(hover_z), yaw + turn, CLOSE, nut_over_peg),
            ("place", nut_at(0.835, gated=True), yaw + turn, CLOSE, nut_down),
            ("open", lambda r: r["robot0_eef_pos"], yaw + turn, OPEN, waited(5)),
            ("retreat", lambda r: np.array([*r["robot0_eef_pos"][:2], carry_z]), yaw + turn, OPEN, waited(10**9)),
        ]


def make_expert(task: str) -> ScriptedExpert:
    """The scripted expert for the canonical task name ``task`` (``lift``, ``can`` or ``square``)."""
    return ScriptedExpert(task)
