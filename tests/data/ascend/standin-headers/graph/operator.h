// TEST ONLY: a stand-in for the slice of CANN's graph/operator.h that docker/plugin/matmul_integer_plugin.cc
// uses, declared as metadef documents it, so g++ can check the plugin's syntax and calls without a
// toolkit (tests/test_docker.py). The real check is building against CANN (docker/plugin/build.sh).
// Operator has no GetInputsSize: an ONNX plugin's operator carries attributes only (issue 11).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>
namespace ge {
using graphStatus = uint32_t;
const graphStatus GRAPH_SUCCESS = 0;
class AscendString {
 public:
  AscendString(const char *s) : s_(s) {}
  std::size_t GetLength() const;
 private:
  const char *s_;
};
class Operator {
 public:
  graphStatus GetAttr(const char *name, std::vector<AscendString> &attr_value) const;
  Operator &SetAttr(const char *name, bool v);
  Operator &SetAttr(const char *name, int64_t v);
};
}  // namespace ge
