// Parsing and checking of the sequence ops' specs (see spec.h for the format).
#include "rssm/spec.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <map>
#include <set>
#include <utility>

#include "dense/dense_math.h"
#include "heads/heads_math.h"

namespace dreamer_fast {
namespace rssm {

namespace {

const std::vector<std::pair<std::string, int>> kNorms = {
    {"none", layer::kNone}, {"layer", layer::kLayer}, {"rms", layer::kRms}};
const std::vector<std::pair<std::string, int>> kActs = {
    {"none", layer::kIdentity}, {"silu", layer::kSilu}, {"elu", layer::kElu},
    {"tanh", layer::kTanh},     {"gelu", layer::kGelu}, {"sigmoid", layer::kSigmoid}};
const std::vector<std::pair<std::string, int>> kCells = {
    {"gru", cells::kGru}, {"ln_gru", cells::kLnGru}, {"block_gru", cells::kBlockGru}};
const std::vector<std::pair<std::string, int>> kStdActs = {
    {"softplus", heads::kStdSoftplus}, {"abs", heads::kStdAbs}, {"sigmoid", heads::kStdSigmoid},
    {"sigmoid2", heads::kStdSigmoid2}};
const std::vector<std::pair<std::string, int>> kMeanActs = {{"none", heads::kMeanNone},
                                                            {"tanh5", heads::kMeanTanh5}};
const std::vector<std::pair<std::string, int>> kMinStdModes = {{"add", heads::kMinStdAdd},
                                                               {"clamp", heads::kMinStdClamp}};
const std::vector<std::pair<std::string, int>> kHeads = {
    {"tanh_normal", kTanhNormal}, {"bounded_normal", kBoundedNormal},
    {"categorical", kCategorical}};

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t end = s.find(sep, start);
    out.push_back(s.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) return out;
    start = end + 1;
  }
}

std::string names_of(const std::vector<std::pair<std::string, int>>& table) {
  std::string out;
  for (const auto& [name, code] : table) out += (out.empty() ? "" : "|") + name;
  return out;
}

// The fields of one spec string; every read marks its key, `finish` rejects the rest.
class Fields {
 public:
  Fields(const char* op, const char* arg, const std::string& spec) : op_(op), arg_(arg) {
    TORCH_CHECK(!spec.empty(), op_, ": `", arg_, "` is empty");
    for (const std::string& item : split(spec, ';')) {
      const size_t eq = item.find('=');
      TORCH_CHECK(eq != std::string::npos && eq > 0, op_, ": `", arg_, "` item '", item,
                  "' is not key=value");
      const std::string key = item.substr(0, eq);
      TORCH_CHECK(values_.emplace(key, item.substr(eq + 1)).second, op_, ": spec field '", key,
                  "' is given twice");
    }
  }

  const std::string& raw(const char* key) {
    const auto it = values_.find(key);
    TORCH_CHECK(it != values_.end(), op_, ": spec field '", key, "' is missing from `", arg_,
                "`");
    used_.insert(key);
    return it->second;
  }

  int64_t integer(const char* key, int64_t low) {
    const std::string& v = raw(key);
    errno = 0;
    char* end = nullptr;
    const long long x = std::strtoll(v.c_str(), &end, 10);
    TORCH_CHECK(!v.empty() && end == v.c_str() + v.size() && errno == 0 && x >= low, op_,
                ": spec field '", key, "' must be an int >= ", low, ", got '", v, "'");
    return x;
  }

  bool boolean(const char* key) {
    const std::string& v = raw(key);
    TORCH_CHECK(v == "0" || v == "1", op_, ": spec field '", key, "' must be 0 or 1, got '", v,
                "'");
    return v == "1";
  }

  // finite; `ok` says whether the value is in range, `want` what the range is
  template <typename Ok>
  double real(const char* key, Ok ok, const char* want) {
    const std::string& v = raw(key);
    errno = 0;
    char* end = nullptr;
    const double x = std::strtod(v.c_str(), &end);
    TORCH_CHECK(!v.empty() && end == v.c_str() + v.size() && errno != ERANGE && std::isfinite(x) &&
                    ok(x),
                op_, ": spec field '", key, "' must be a finite float", want, ", got '", v, "'");
    return x;
  }
  double real(const char* key) {
    return real(key, [](double) { return true; }, "");
  }

  int name(const char* key, const std::vector<std::pair<std::string, int>>& table) {
    return lookup(key, raw(key), table);
  }

  int lookup(const char* key, const std::string& v,
             const std::vector<std::pair<std::string, int>>& table) const {
    for (const auto& [n, code] : table)
      if (n == v) return code;
    TORCH_CHECK(false, op_, ": spec field '", key, "' must be one of ", names_of(table),
                ", got '", v, "'");
  }

  // The dense layers of `key`, assigning tensor indices from `next`.
  std::vector<dense::Layer> layers(const char* key, double eps, int64_t& next) {
    const std::string& v = raw(key);
    std::vector<dense::Layer> out;
    if (v.empty()) return out;
    for (const std::string& item : split(v, ',')) {
      const std::vector<std::string> p = split(item, ':');
      TORCH_CHECK(p.size() == 3 && (p[0] == "0" || p[0] == "1"), op_, ": spec field '", key,
                  "' layer ", out.size(), " must be has_bias:norm:act (has_bias 0 or 1), got '",
                  item, "'");
      dense::Layer r;
      r.norm = lookup(key, p[1], kNorms);
      r.act = lookup(key, p[2], kActs);
      r.eps = eps;
      r.w = next++;
      if (p[0] == "1") r.b = next++;
      if (r.norm != layer::kNone) r.nw = next++;
      if (r.norm == layer::kLayer) r.nb = next++;
      out.push_back(r);
    }
    return out;
  }

  void finish() const {
    for (const auto& [key, value] : values_)
      TORCH_CHECK(used_.count(key), op_, ": unknown spec field '", key, "' in `", arg_, "`");
  }

  const char* op() const { return op_; }

 private:
  const char* op_;
  const char* arg_;
  std::map<std::string, std::string> values_;
  std::set<std::string> used_;
};

const auto positive = [](double x) { return x > 0; };

void check_params(const char* op, const char* arg, at::TensorList params, int64_t expected) {
  TORCH_CHECK(static_cast<int64_t>(params.size()) == expected, op, ": `", arg,
              "` describes ", expected, " parameter tensors, got ", params.size());
  for (size_t i = 1; i < params.size(); ++i) {
    TORCH_CHECK(params[i].scalar_type() == params[0].scalar_type() &&
                    params[i].device() == params[0].device(),
                op, ": parameter ", i, " is ", params[i].scalar_type(), " on ",
                params[i].device(), ", parameter 0 is ", params[0].scalar_type(), " on ",
                params[0].device());
  }
}

// The layers of an MLP against their tensors: W 2-D, the vectors [out], each layer's
// input the previous layer's output, the last layer `last_out` wide (when >= 0).
void check_mlp(const char* op, const char* field, at::TensorList P,
               const std::vector<dense::Layer>& layers, int64_t last_out,
               const char* last_field) {
  for (size_t l = 0; l < layers.size(); ++l) {
    const dense::Layer& r = layers[l];
    const Tensor& W = P[r.w];
    TORCH_CHECK(W.dim() == 2, op, ": spec field '", field, "' layer ", l,
                ": the weight must be 2-D, got ", W.sizes());
    for (const int64_t i : {r.b, r.nw, r.nb})
      TORCH_CHECK(i < 0 || (P[i].dim() == 1 && P[i].size(0) == W.size(0)), op, ": spec field '",
                  field, "' layer ", l, ": parameter ", i, " must be [", W.size(0), "], got ",
                  P[i].sizes(), " (check the layer's has_bias and norm)");
    if (l > 0)
      TORCH_CHECK(W.size(1) == P[layers[l - 1].w].size(0), op, ": spec field '", field,
                  "' layer ", l, " takes ", W.size(1), " inputs, layer ", l - 1, " gives ",
                  P[layers[l - 1].w].size(0));
  }
  if (last_out >= 0 && !layers.empty())
    TORCH_CHECK(P[layers.back().w].size(0) == last_out, op, ": spec field '", field,
                "': the last layer gives ", P[layers.back().w].size(0), " values, '",
                last_field, "' asks for ", last_out);
}

}  // namespace

Spec parse_rssm(const char* op, at::TensorList params, const std::string& spec) {
  Fields f(op, "spec", spec);
  Spec s;
  cells::Cell& c = s.cell;
  c.kind = static_cast<cells::Kind>(f.name("cell", kCells));
  s.classes = f.integer("classes", 0);
  s.stoch = f.integer("stoch", 1);
  c.blocks = f.integer("blocks", 1);
  c.layers = f.integer("dynlayers", 1);
  c.act = f.name("cell_act", kActs);
  c.bias_ih = c.bias_hh = f.boolean("cell_bias");
  const double eps = f.real("eps", positive, " > 0");
  c.eps = f.real("cell_eps", positive, " > 0");
  c.update_bias = f.real("update_bias");
  c.norm = f.boolean("cell_norm");
  c.state_first = f.boolean("cell_state_first");
  // the LayerNorm's removal and the column order are options of the ln_gru only
  TORCH_CHECK(c.kind == cells::kLnGru || c.norm, op,
              ": spec field 'cell_norm' must be 1 unless cell=ln_gru, got 0");
  TORCH_CHECK(c.kind == cells::kLnGru || !c.state_first, op,
              ": spec field 'cell_state_first' must be 0 unless cell=ln_gru, got 1");
  s.unimix = f.real("unimix", [](double x) { return x >= 0 && x <= 1; }, " in [0, 1]");
  s.min_std = f.real("min_std", [](double x) { return x >= 0; }, " >= 0");
  s.std_act = f.name("std_act", kStdActs);
  s.mean_act = f.name("mean_act", kMeanActs);
  s.min_std_mode = f.name("min_std_mode", kMinStdModes);
  int64_t next = 0;
  s.img_in = f.layers("img_in", eps, next);
  TORCH_CHECK(s.img_in.size() == (s.block_gru() ? 0u : 1u), op, ": spec field 'img_in' must ",
              s.block_gru() ? "be empty for cell=block_gru" : "hold one layer for gru / ln_gru",
              ", got ", s.img_in.size());
  c.first = next;
  next += c.param_count();
  s.img_out = f.layers("img_out", eps, next);
  s.obs_out = f.layers("obs_out", eps, next);
  TORCH_CHECK(!s.img_out.empty(), op, ": spec field 'img_out' needs at least its output layer");
  TORCH_CHECK(!s.obs_out.empty(), op, ": spec field 'obs_out' needs at least its output layer");
  f.finish();
  check_params(op, "spec", params, next);
  check_mlp(op, "img_in", params, s.img_in, -1, "");
  check_mlp(op, "img_out", params, s.img_out, s.stats_size(), s.classes ? "classes" : "stoch");
  check_mlp(op, "obs_out", params, s.obs_out, s.stats_size(), s.classes ? "classes" : "stoch");
  if (s.block_gru()) {
    const Tensor& gru_bias = params[c.first + c.param_count() - 1];
    const int64_t D = gru_bias.dim() == 1 ? gru_bias.size(0) / 3 : 0;
    TORCH_CHECK(D > 0 && D % c.blocks == 0, op, ": spec field 'blocks' (", c.blocks,
                ") must divide the deter size ", D);
    TORCH_CHECK(params[c.first + 9].dim() == 3 && params[c.first + 9].size(0) == c.blocks, op,
                ": spec field 'blocks' (", c.blocks, ") does not match the block weights ",
                params[c.first + 9].sizes());
  }
  return s;
}

ActorSpec parse_actor(const char* op, at::TensorList params, const std::string& spec) {
  Fields f(op, "actor_spec", spec);
  ActorSpec a;
  a.head = f.name("head", kHeads);
  a.actions = f.integer("actions", 1);
  const double eps = f.real("eps", positive, " > 0");
  a.min_std = f.real("min_std");
  a.max_std = f.real("max_std");
  a.std_offset = f.real("std_offset");
  a.mean_scale = f.real("mean_scale");
  a.unimix = f.real("unimix", [](double x) { return x >= 0 && x <= 1; }, " in [0, 1]");
  int64_t next = 0;
  a.layers = f.layers("layers", eps, next);
  TORCH_CHECK(!a.layers.empty(), op, ": spec field 'layers' needs at least the output layer");
  f.finish();
  check_params(op, "actor_spec", params, next);
  check_mlp(op, "layers", params, a.layers, a.head == kCategorical ? a.actions : 2 * a.actions,
            "actions");
  return a;
}

}  // namespace rssm
}  // namespace dreamer_fast
