"""`StagedBuild`: what every build pass shares — hidden layers in stages, the stem, the task heads.

Not a pass itself. Layer j (1-based, 0 is the stem) lies in stage (j-1)*stages // nodes with
`channels[stage]` channels; each stage halves an image's resolution after the stem's own stride. The
options default from the spec's `network` section, so every search space built from one spec (the
method's and the baselines') has the same layout.
"""
from __future__ import annotations

from math import ceil

from pydantic import Field, model_validator

from dagir.errors import UserError
from dagir.ir import Node, Op, Task, TensorType
from dagir.pass_manager import Pass
from dagir.tasks import TASK_KINDS


class StagedBuild(Pass):
    """Options and layout shared by the build passes."""

    builds = True
    nodes: int = Field(9, ge=1)
    stages: int = Field(3, ge=1)
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64])
    stem_channels: int = Field(16, ge=1)
    stem_stride: int = Field(1, ge=1)
    head_hidden: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _stages_fit(self) -> "StagedBuild":
        if self.stages > self.nodes:
            raise ValueError(f"stages ({self.stages}) cannot exceed nodes ({self.nodes})")
        if len(self.channels) != self.stages or min(self.channels) < 1:
            raise ValueError(f"channels needs {self.stages} positive widths, one per stage")
        return self

    def stage_of(self, layer: int) -> int:
        return (layer - 1) * self.stages // self.nodes

    def layer_type(self, input_type: TensorType, layer: int) -> TensorType:
        """The type of layer `layer` (0 is the stem) for an input of `input_type`."""
        stage = 0 if layer == 0 else self.stage_of(layer)
        width = self.stem_channels if layer == 0 else self.channels[stage]
        if not input_type.is_image:
            return TensorType((width,))
        stride = self.stem_stride * 2 ** stage
        return TensorType((width, ceil(input_type.shape[1] / stride), ceil(input_type.shape[2] / stride)))

    def stem_op(self, input_type: TensorType) -> Op:
        if input_type.is_image:
            return Op("conv_bn_relu", {"c_in": input_type.channels, "c_out": self.stem_channels,
                                       "stride": self.stem_stride})
        return Op("linear_relu", {"d_in": input_type.shape[0], "d_out": self.stem_channels})


def is_dense(task: Task) -> bool:
    """Whether the task predicts per pixel (segmentation, depth, normals)."""
    kind = TASK_KINDS.get(task.kind)
    return kind is not None and kind.dense


def task_head(task: Task, hidden: int, input_type: TensorType) -> Node:
    """The head node `head_<task>`, with its `hidden` input width.

    A vector task's head takes `[hidden]` and applies `head_mlp`. A dense task's head takes
    `[hidden, H, W]` at the input's resolution, where its labels live, and applies `dense_head`, so
    its output is `[out_dim, H, W]`; `legalize-types` up-samples every read-out to that resolution.
    """
    if not is_dense(task):
        return Node(f"head_{task.name}", "head", TensorType((task.out_dim,)), in_type=TensorType((hidden,)),
                    op=Op("head_mlp", {"d_in": hidden, "d_out": task.out_dim}), task=task.name)
    if not input_type.is_image:
        raise UserError(f"task {task.name!r} is a {task.kind} task: it needs an image input, not {input_type}")
    resolution = input_type.shape[1:]
    return Node(f"head_{task.name}", "head", TensorType((task.out_dim, *resolution)),
                in_type=TensorType((hidden, *resolution)),
                op=Op("dense_head", {"c_in": hidden, "c_out": task.out_dim}), task=task.name)
