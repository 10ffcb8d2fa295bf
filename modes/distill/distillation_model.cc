#include "modes/distill/distillation_model.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <sstream>
#include <stdexcept>

#include "distributed/data_parallel.h"
#include "modes/distill/logits_distillation_loss.h"
#include "opt/errors.h"

namespace mto {
namespace distill {
namespace {

constexpr char kHolderName[] = "_distillation";

torch::nn::Module& unwrapped(torch::nn::Module& model) {
  auto* wrapper = dynamic_cast<DataParallelImpl*>(&model);
  return wrapper ? *wrapper->module() : model;
}

DistillationHolder& holder_or_throw(torch::nn::Module& model, const char* what) {
  std::shared_ptr<DistillationHolder> holder = find_distillation(model);
  if (!holder) {
    throw StateError(std::string(what) + ": the model is not distilling (apply the mode 'kd_loss' first)");
  }
  return *holder;
}

// An error of the training step that names the teacher.
std::invalid_argument teacher_error(const DistillationHolder& holder, const std::string& what) {
  return std::invalid_argument("kd_loss: the teacher " + holder.teacher_name + " " + what);
}

std::string shape_of(const at::Tensor& tensor) {
  std::ostringstream out;
  out << tensor.sizes();
  return out.str();
}

}  // namespace

DistillationHolder::DistillationHolder(std::shared_ptr<torch::nn::Module> teacher_in, std::string teacher_name_in,
                                       double temperature_in, double kd_loss_weight_in)
    : torch::nn::Module("mto::distill::DistillationHolder"),
      teacher(std::move(teacher_in)),
      teacher_name(std::move(teacher_name_in)),
      temperature(temperature_in),
      kd_loss_weight(kd_loss_weight_in) {
  for (at::Tensor& p : teacher->parameters()) p.set_requires_grad(false);
  teacher->eval();
}

std::shared_ptr<DistillationHolder> find_distillation(torch::nn::Module& model) {
  for (const auto& child : unwrapped(model).named_children()) {
    if (child.key() == kHolderName) return std::dynamic_pointer_cast<DistillationHolder>(child.value());
  }
  return nullptr;
}

void attach_distillation(torch::nn::Module& student, std::shared_ptr<DistillationHolder> holder) {
  if (find_distillation(student)) throw ApplyModeError("kd_loss: the model is distilling already");
  student.register_module(kHolderName, std::move(holder));
}

void detach_distillation(torch::nn::Module& student) {
  if (find_distillation(student)) student.unregister_module(kHolderName);
}

at::Tensor distillation_forward(torch::nn::Module& model, const ForwardFunction& forward, const at::Tensor& input) {
  DistillationHolder& holder = holder_or_throw(model, "distillation_forward");
  {
    torch::NoGradGuard no_grad;
    try {
      holder.teacher_output = forward(*holder.teacher, input);
    } catch (const c10::Error& e) {
      throw teacher_error(holder, "cannot take the student's input of shape " + shape_of(input) + ": " +
                                      e.what_without_backtrace());
    } catch (const std::invalid_argument& e) {
      throw teacher_error(holder, "cannot take the student's input of shape " + shape_of(input) + ": " + e.what());
    }
  }
  holder.student_output = forward(model, input);
  return holder.student_output;
}

at::Tensor compute_kd_loss(torch::nn::Module& model, const at::Tensor& student_loss) {
  DistillationHolder& holder = holder_or_throw(model, "compute_kd_loss");
  if (!holder.student_output.defined()) {
    throw StateError("compute_kd_loss: no distillation_forward since the last loss");
  }
  if (!holder.student_output.sizes().equals(holder.teacher_output.sizes())) {
    const std::string shapes = "gives logits of shape " + shape_of(holder.teacher_output) + ", the student " +
                               shape_of(holder.student_output) + ": distilling needs the same";
    holder.student_output = at::Tensor();
    holder.teacher_output = at::Tensor();
    throw teacher_error(holder, shapes);
  }
  at::Tensor kd = logits_distillation_loss(holder.student_output, holder.teacher_output, holder.temperature);
  holder.student_output = at::Tensor();
  holder.teacher_output = at::Tensor();
  if (!student_loss.defined()) return kd * holder.kd_loss_weight;
  return kd * holder.kd_loss_weight + student_loss * (1.0 - holder.kd_loss_weight);
}

}  // namespace distill
}  // namespace mto
