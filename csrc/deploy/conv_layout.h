// Running a convolution kernel that wants [n, c, h, w] on channels-last tensors: the input
// is copied to NCHW, the kernel writes NCHW, and the result is copied back to NHWC. Used
// for the layers the direct kernels do not read channels-last (see conv2d_channels_last).
#pragma once
#include <functional>

#include "deploy/packed_linear.h"

namespace lowbit {

void conv2d_through_nchw(const Conv2dArgs& a, const std::function<void(const Conv2dArgs&)>& run);

}  // namespace lowbit
