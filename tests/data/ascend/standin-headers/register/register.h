// TEST ONLY: a stand-in for the slice of CANN's register/register.h that docker/plugin/matmul_integer_plugin.cc
// uses, declared as metadef documents it, so g++ can check the plugin's syntax and calls without a
// toolkit (tests/test_docker.py). The real check is building against CANN (docker/plugin/build.sh).
#pragma once
#include <functional>
#include <string>
#include <vector>
#include "graph/operator.h"
namespace domi {
using Status = uint32_t;
constexpr Status SUCCESS = 0, FAILED = 1;
enum FrameworkType { CAFFE = 0, MINDSPORE = 1, TENSORFLOW = 3, ONNX = 5 };
enum class ImplyType : unsigned int { BUILDIN = 0, TVM, CUSTOM, AI_CPU };
using ParseParamByOpFunc = std::function<Status(const ge::Operator &, ge::Operator &)>;
class OpRegistrationData {
 public:
  OpRegistrationData(const std::string &om_optype);
  OpRegistrationData &FrameworkType(const domi::FrameworkType &fmk_type);
  OpRegistrationData &OriginOpType(const std::vector<ge::AscendString> &ori_op_type_list);
  OpRegistrationData &ParseParamsByOperatorFn(const ParseParamByOpFunc &fn);
  OpRegistrationData &ImplyType(const domi::ImplyType &imply_type);
};
class OpReceiver { public: OpReceiver(OpRegistrationData &reg_data); };
#define REGISTER_CUSTOM_OP(name) REGISTER_CUSTOM_OP_UNIQ_HELPER(__COUNTER__, name)
#define REGISTER_CUSTOM_OP_UNIQ_HELPER(ctr, name) REGISTER_CUSTOM_OP_UNIQ(ctr, name)
#define REGISTER_CUSTOM_OP_UNIQ(ctr, name) \
  static OpReceiver register_op##ctr __attribute__((unused)) = OpRegistrationData(name)
}  // namespace domi
