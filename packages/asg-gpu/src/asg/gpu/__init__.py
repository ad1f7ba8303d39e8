"""asg.gpu: the wgpu/WGSL backend of asg-core."""
