/*
 * edge-llm: ATC ONNX parser plugin for MatMulInteger.
 *
 * ATC's built-in ONNX parser has no MatMulInteger, so a W8A8 graph fails with
 * "E19010 No parser is registered for op MatMulInteger". This plugin maps the node onto
 * Ascend's BatchMatMulV2, whose int8 x int8 -> int32 form is the same integer product
 * (ops proto: x1/x2 DT_INT8, y DT_INT32, adj_x1/adj_x2, offset_x).
 *
 * Only the s8s8 dialect is mapped: int8 operands with no zero points (or constant zeros).
 * ONNX inputs are passed on by position, so MatMulInteger's a_zero_point/b_zero_point would
 * land on BatchMatMulV2's bias/offset_w slots; such nodes are refused here, and
 * host/ascend/opcheck.py refuses them on the workstation before ATC ever runs.
 *
 * The operator handed to this function is built from the ONNX NodeProto's fields only
 * (Ascend/parser Message2Operator::ParseOperatorAttrs): it has no inputs yet, so
 * GetInputsSize() is always 0. The node's input names arrive as its repeated-string "input"
 * attribute; an omitted optional input is an empty name.
 */
#include <cstddef>
#include <string>
#include <vector>

#include "graph/operator.h"
#include "register/register.h"

namespace domi {

namespace {
constexpr std::size_t kMatMulIntegerOperands = 2;  // A, B; zero points would be inputs 3 and 4
}  // namespace

std::size_t CountNamedInputs(const ge::Operator &op_src) {
  std::vector<ge::AscendString> names;
  if (op_src.GetAttr("input", names) != ge::GRAPH_SUCCESS) {
    return 0;  // no "input" field on this node: nothing to refuse
  }
  std::size_t named = 0;
  for (const auto &name : names) {
    if (name.GetLength() > 0) {
      ++named;
    }
  }
  return named;
}

Status ParseParamsMatMulInteger(const ge::Operator &op_src, ge::Operator &op_dest) {
  if (CountNamedInputs(op_src) > kMatMulIntegerOperands) {
    return FAILED;  // zero-point inputs: the u8u8 dialect, not s8s8 (rebuild with --target ascend)
  }
  op_dest.SetAttr("adj_x1", false);  // ONNX MatMulInteger has no transposes
  op_dest.SetAttr("adj_x2", false);
  op_dest.SetAttr("offset_x", static_cast<int64_t>(0));  // symmetric int8: zero point 0
  return SUCCESS;
}

// OriginOpType is "<domain>::<graph opset>::<op>": ATC matches the graph's ai.onnx opset
// import, not the op's since-version, so list every opset an export may declare (10..18;
// the parser documents up to v18).
REGISTER_CUSTOM_OP("BatchMatMulV2")
    .FrameworkType(ONNX)
    .OriginOpType({ge::AscendString("ai.onnx::10::MatMulInteger"),
                   ge::AscendString("ai.onnx::11::MatMulInteger"),
                   ge::AscendString("ai.onnx::12::MatMulInteger"),
                   ge::AscendString("ai.onnx::13::MatMulInteger"),
                   ge::AscendString("ai.onnx::14::MatMulInteger"),
                   ge::AscendString("ai.onnx::15::MatMulInteger"),
                   ge::AscendString("ai.onnx::16::MatMulInteger"),
                   ge::AscendString("ai.onnx::17::MatMulInteger"),
                   ge::AscendString("ai.onnx::18::MatMulInteger")})
    .ParseParamsByOperatorFn(ParseParamsMatMulInteger)
    .ImplyType(ImplyType::TVM);

}  // namespace domi
