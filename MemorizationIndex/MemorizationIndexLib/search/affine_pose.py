"""The volume stage's pose with mirror, axis order and scale (issue 21).

A synthetic volume's header cannot be trusted: generative pipelines write an identity affine
(wrong spacing), a spacing-only affine, or their axes in another order, and training
transforms mirror and zoom. So the map from a training volume to its copy is affine:

    p_syn = D @ G @ R @ (p_train - centre) + centre + shift          (LPS mm)

read right to left: R turns the training anatomy (a proper rotation, angles as
`volume_pose.rotation_matrix`), G mirrors it and/or puts its axes in another order (a
signed permutation; identity when the copy is neither mirrored nor reordered), and
D = diag(scale) stretches it along the SYNTHETIC volume's own L, P and S axes (a header at
the wrong spacing, a zoom). `centre` is the training volume's physical centre, so `shift`
reads as how far the copy moved. A `RigidPose` is the case G = D = identity.

Any linear map of that form decomposes back exactly (`decompose`), so a volumes.csv row
(`summary`) rebuilds the same 4x4 matrix for Slicer's placement (`from_summary`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .volume_pose import RigidPose, homogeneous_matrix, nearest_rotation, rotation_matrix

AXIS_LETTERS = "LPS"


def nearest_signed_permutation(matrix) -> np.ndarray:
    """The signed permutation G (entries 0 and +-1) closest to `matrix` (the axis each row
    draws most of its weight from, each axis once)."""
    m = np.asarray(matrix, np.float64)
    # scipy here, not at the top: Slicer's process reads poses and must not load scipy
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-np.abs(m))
    g = np.zeros((3, 3))
    g[rows, cols] = np.where(m[rows, cols] < 0, -1.0, 1.0)
    return g


def decompose(linear) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scale [3], G, R) with linear = diag(scale) @ G @ R, R a proper rotation.

    Exact for maps of that form (the rows of G @ R are orthonormal, so the row norms of
    `linear` are the scales); for any other map, the nearest of that form."""
    a = np.asarray(linear, np.float64)
    scale = np.linalg.norm(a, axis=1)
    unit = a / scale[:, None]
    g = nearest_signed_permutation(unit)
    return scale, g, nearest_rotation(g.T @ unit)  # a reflection belongs to G, never to R


def mirror_text(g) -> str:
    """How G reorders and mirrors the axes, as the synthetic axis each training axis went
    to: "LPS" is none, "RPS" mirrored left-right, "LSP" the P and S axes swapped."""
    opposite = {"L": "R", "P": "A", "S": "I"}
    out = []
    for j in range(3):  # training axis j lands on synthetic axis i, signed
        i = int(np.argmax(np.abs(g[:, j])))
        letter = AXIS_LETTERS[i]
        out.append(letter if g[i, j] > 0 else opposite[letter])
    return "".join(out)


def mirror_from_text(text: str) -> np.ndarray:
    """Inverse of `mirror_text`."""
    signs = {"L": (0, 1.0), "R": (0, -1.0), "P": (1, 1.0), "A": (1, -1.0)}
    signs |= {"S": (2, 1.0), "I": (2, -1.0)}
    g = np.zeros((3, 3))
    for j, letter in enumerate(text.strip().upper()):
        i, sign = signs[letter]
        g[i, j] = sign
    if len(text.strip()) != 3 or not np.allclose(np.abs(g).sum(axis=0), 1.0):
        raise ValueError(f"not an axis order of L/R, P/A and S/I: {text!r}")
    if not np.allclose(np.abs(g).sum(axis=1), 1.0):
        raise ValueError(f"not an axis order of L/R, P/A and S/I: {text!r}")
    return g


@dataclass(frozen=True)
class AffinePose:
    """p_syn = linear @ (p_train - centre_mm) + centre_mm + shift_mm (LPS mm), with
    linear = diag(scale) @ mirror @ rotation (module docstring)."""

    linear: np.ndarray
    shift_mm: np.ndarray
    centre_mm: np.ndarray

    @classmethod
    def of(cls, pose: RigidPose | AffinePose) -> AffinePose:
        """A pose of either kind as an AffinePose."""
        if isinstance(pose, AffinePose):
            return pose
        return cls(np.asarray(pose.matrix, np.float64), pose.shift_mm, pose.centre_mm)

    @classmethod
    def compose(cls, scale, mirror, angles_deg, shift_mm, centre_mm) -> AffinePose:
        linear = np.diag(np.asarray(scale, np.float64)) @ mirror @ rotation_matrix(angles_deg)
        return cls(linear, np.asarray(shift_mm, np.float64), np.asarray(centre_mm, np.float64))

    @classmethod
    def from_homogeneous(cls, matrix, centre_mm) -> AffinePose:
        """From a 4x4 map training -> synthetic, written about `centre_mm`."""
        m = np.asarray(matrix, np.float64)
        c = np.asarray(centre_mm, np.float64)
        return cls(m[:3, :3].copy(), m[:3, :3] @ c + m[:3, 3] - c, c)

    @property
    def parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scale [3], mirror G, rotation R): see `decompose`."""
        return decompose(self.linear)

    @property
    def scale(self) -> np.ndarray:
        """Stretch along the synthetic volume's L, P and S axes."""
        return self.parts[0]

    @property
    def isotropic_scale(self) -> float:
        """The volume ratio's cube root: one number for the size of the copy."""
        return float(np.prod(self.scale) ** (1.0 / 3.0))

    @property
    def mirror(self) -> str:
        """ "LPS" when the copy is neither mirrored nor reordered (see `mirror_text`)."""
        return mirror_text(self.parts[1])

    @property
    def mirrored(self) -> bool:
        return bool(np.linalg.det(self.linear) < 0)

    @property
    def rotation(self) -> np.ndarray:
        return self.parts[2]

    @property
    def rigid_part(self) -> RigidPose:
        """The rotation and shift alone (no mirror, reordering or scale)."""
        return RigidPose(self.rotation, self.shift_mm, self.centre_mm)

    @property
    def angles_deg(self) -> np.ndarray:
        """Degrees about the (LR, AP, SI) axes of the rotation part."""
        return self.rigid_part.angles_deg

    @property
    def rotation_deg(self) -> float:
        return self.rigid_part.rotation_deg

    @property
    def rigid(self) -> bool:
        """No mirror, reordering or scale (within a tenth of a percent)."""
        scale, g, _ = self.parts
        return bool(np.allclose(g, np.eye(3)) and np.allclose(scale, 1.0, atol=1e-3))

    def apply(self, points) -> np.ndarray:
        """Training points [..., 3] -> synthetic points."""
        p = np.asarray(points, np.float64)
        return (p - self.centre_mm) @ self.linear.T + self.centre_mm + self.shift_mm

    def apply_inverse(self, points) -> np.ndarray:
        """Synthetic points [..., 3] -> training points."""
        p = np.asarray(points, np.float64)
        inverse = np.linalg.inv(self.linear)
        return (p - self.centre_mm - self.shift_mm) @ inverse.T + self.centre_mm

    def recentred(self, centre_mm) -> AffinePose:
        c = np.asarray(centre_mm, np.float64)
        return AffinePose(self.linear, self.apply(c) - c, c)

    def homogeneous(self) -> np.ndarray:
        """4x4 LPS matrix of the map training -> synthetic (mirror and scale included)."""
        return homogeneous_matrix(self.linear, self.shift_mm, self.centre_mm)

    def to_sitk(self) -> sitk.AffineTransform:
        """The resampling map synthetic -> training, as SimpleITK's Resample wants it."""
        inverse = np.linalg.inv(self.linear)
        t = sitk.AffineTransform(3)
        t.SetCenter([float(v) for v in self.centre_mm])
        t.SetMatrix([float(v) for v in inverse.ravel()])
        t.SetTranslation([float(v) for v in -(inverse @ self.shift_mm)])
        return t

    def summary(self) -> dict:
        """Plain numbers for a report or volumes.csv: the rigid columns, then the axes
        (`mirror_text`: "LPS" unless mirrored or reordered), whether that mirrors, and the
        scale (isotropic, then along the synthetic L, P and S axes)."""
        scale, g, _ = self.parts
        return self.rigid_part.summary() | {
            "axes": mirror_text(g),
            "mirrored": bool(np.linalg.det(g) < 0),
            "scale": self.isotropic_scale,
            "scale_l": float(scale[0]),
            "scale_p": float(scale[1]),
            "scale_s": float(scale[2]),
        }

    @classmethod
    def from_summary(cls, values: dict) -> AffinePose:
        """The pose `summary()` wrote (a volumes.csv row); a row of the rigid volume stage
        (no mirror or per-axis scale columns) reads as rigid. KeyError or ValueError when
        the row has no pose."""
        rigid = RigidPose.from_summary(values)
        mirror = mirror_from_text(str(values.get("axes") or "LPS"))
        scale = [float(values.get(k) or 1.0) for k in ("scale_l", "scale_p", "scale_s")]
        return cls(np.diag(scale) @ mirror @ rigid.matrix, rigid.shift_mm, rigid.centre_mm)

    def text(self) -> str:
        """The pose in words (VolumeResult.pose_text): rotation, shift, then mirror and
        scale where the copy has them."""
        p = self.summary()
        words = (
            f"rotated LR {p['angle_lr_deg']:+.1f}°, AP {p['angle_ap_deg']:+.1f}°, "
            f"SI {p['angle_si_deg']:+.1f}°; shifted {p['shift_l_mm']:+.1f} L, "
            f"{p['shift_p_mm']:+.1f} P, {p['shift_s_mm']:+.1f} S mm"
        )
        if p["axes"] != "LPS":
            kind = "mirrored" if p["mirrored"] else "axes reordered"
            words += f"; {kind}: training L, P, S lie along {p['axes']}"
        if not np.allclose(self.scale, 1.0, atol=0.005):
            words += (
                f"; scaled x{p['scale']:.3f} (L {p['scale_l']:.3f}, P {p['scale_p']:.3f}, "
                f"S {p['scale_s']:.3f})"
            )
        return words
