// The Python extension `lowbit._C`. Importing it loads liblowbit_ops.so (linked with
// $ORIGIN rpath), whose static initialisers register the torch.ops.lowbit.* operators.
#include <pybind11/pybind11.h>

namespace lowbit {
const char* ops_library_version();
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "lowbit native extension: registers torch.ops.lowbit.*";
  m.attr("__version__") = lowbit::ops_library_version();
}
