// cdp_ort_density: predict electron densities with onnxruntime alone, from a `cdp export --format onnx` directory.
//
// Reads one structure and its probe points (the .npy files written by `cdp export --example-inputs DIR`),
// builds the atom->atom and atom->probe neighbour lists itself (cell list over periodic images, distance
// <= cutoff, as cdp does), runs the encoder once and the decoder per probe batch (batches run concurrently,
// each session with ONE intra-op thread: onnxruntime's CPU ScatterND-add is not thread safe), and writes
// the densities as a float64 .npy file.  Optionally compares them with the reference densities.
//
// usage: cdp_ort_density EXPORT_DIR EXAMPLE_DIR OUT.npy [--batch K] [--workers W] [--check TOL] [--custom-ops LIB]
// --custom-ops: register an operator library first (`cdp export --ops cdp` writes cdp_ort_ops.so beside the
// models; cdp_export.json's onnx.custom_ops records its SHA-256 — check it before loading a library you
// did not build).

#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

// ---------------------------------------------------------------- .npy (version 1-3, C order, <i8 / <f8)
struct Npy {
  std::string descr;
  std::vector<int64_t> shape;
  std::vector<char> data;
  int64_t count() const {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
  }
};

Npy read_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(path + ": cannot open");
  char magic[6];
  f.read(magic, 6);
  if (std::memcmp(magic, "\x93NUMPY", 6) != 0) throw std::runtime_error(path + ": not an .npy file");
  unsigned char ver[2];
  f.read(reinterpret_cast<char*>(ver), 2);
  uint32_t hlen = 0;
  if (ver[0] == 1) {
    unsigned char b[2];
    f.read(reinterpret_cast<char*>(b), 2);
    hlen = b[0] | (b[1] << 8);
  } else {
    unsigned char b[4];
    f.read(reinterpret_cast<char*>(b), 4);
    hlen = b[0] | (b[1] << 8) | (b[2] << 16) | (uint32_t(b[3]) << 24);
  }
  std::string header(hlen, ' ');
  f.read(&header[0], hlen);
  Npy out;
  auto d = header.find("'descr'");
  auto q1 = header.find('\'', header.find(':', d) + 1);
  auto q2 = header.find('\'', q1 + 1);
  out.descr = header.substr(q1 + 1, q2 - q1 - 1);
  if (header.find("'fortran_order': True") != std::string::npos) throw std::runtime_error(path + ": Fortran order not supported");
  auto s = header.find('(', header.find("'shape'"));
  auto e = header.find(')', s);
  std::stringstream ss(header.substr(s + 1, e - s - 1));
  std::string tok;
  while (std::getline(ss, tok, ',')) {
    if (tok.find_first_not_of(' ') == std::string::npos) continue;
    out.shape.push_back(std::stoll(tok));
  }
  if (out.descr != "<f8" && out.descr != "<i8") throw std::runtime_error(path + ": dtype " + out.descr + " (expected <f8 or <i8)");
  out.data.resize(size_t(out.count()) * 8);
  f.read(out.data.data(), out.data.size());
  if (!f) throw std::runtime_error(path + ": truncated");
  return out;
}

template <typename T>
std::vector<T> npy_values(const Npy& a, const char* descr, const std::string& name) {
  if (a.descr != descr) throw std::runtime_error(name + ": dtype " + a.descr + ", expected " + descr);
  std::vector<T> v(size_t(a.count()));
  std::memcpy(v.data(), a.data.data(), a.data.size());
  return v;
}

void write_npy(const std::string& path, const std::vector<double>& values, const std::vector<int64_t>& shape) {
  std::string sh = "(";
  for (size_t i = 0; i < shape.size(); ++i) sh += std::to_string(shape[i]) + (shape.size() == 1 || i + 1 < shape.size() ? "," : "");
  sh += ")";
  std::string header = "{'descr': '<f8', 'fortran_order': False, 'shape': " + sh + ", }";
  size_t total = 10 + header.size() + 1;
  header += std::string((64 - total % 64) % 64, ' ') + "\n";
  std::ofstream f(path, std::ios::binary);
  f.write("\x93NUMPY\x01\x00", 8);
  uint16_t hl = uint16_t(header.size());
  f.put(char(hl & 0xff));
  f.put(char(hl >> 8));
  f.write(header.data(), header.size());
  f.write(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(double));
  if (!f) throw std::runtime_error(path + ": write failed");
}

// ---------------------------------------------------------------- neighbour search
using Vec3 = std::array<double, 3>;

struct Edges {
  std::vector<int64_t> sender, receiver;  // [atom, query]
  std::vector<double> vec;                // [E*3], r_query - (r_atom + n.cell)
};

Vec3 cross(const Vec3& a, const Vec3& b) { return {a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]}; }
double norm(const Vec3& a) { return std::sqrt(a[0] * a[0] + a[1] * a[1] + a[2] * a[2]); }
Vec3 unit(const Vec3& a) {
  double n = norm(a);
  return {a[0] / n, a[1] / n, a[2] / n};
}

// Periodic frame: cell rows on periodic axes, unit vectors completing the basis elsewhere.
class Frame {
 public:
  Frame(const std::vector<double>& cell, const std::vector<int64_t>& pbc, double cutoff) : cutoff_(cutoff) {
    for (int k = 0; k < 3; ++k) pbc_[k] = pbc[k] != 0;
    std::vector<int> per, fr;
    for (int k = 0; k < 3; ++k) (pbc_[k] ? per : fr).push_back(k);
    for (int k = 0; k < 3; ++k) basis_[k] = {k == 0 ? 1.0 : 0.0, k == 1 ? 1.0 : 0.0, k == 2 ? 1.0 : 0.0};
    for (int k : per) basis_[k] = {cell[3 * k], cell[3 * k + 1], cell[3 * k + 2]};
    if (per.size() == 2) {
      basis_[fr[0]] = unit(cross(basis_[per[0]], basis_[per[1]]));
    } else if (per.size() == 1) {
      Vec3 a = basis_[per[0]];
      int least = 0;
      for (int k = 1; k < 3; ++k)
        if (std::fabs(a[k]) < std::fabs(a[least])) least = k;
      Vec3 e{0, 0, 0};
      e[least] = 1.0;
      Vec3 u = unit(cross(a, e));
      basis_[fr[0]] = u;
      basis_[fr[1]] = unit(cross(a, u));
    }
    const auto& b = basis_;
    double det = b[0][0] * (b[1][1] * b[2][2] - b[1][2] * b[2][1]) - b[0][1] * (b[1][0] * b[2][2] - b[1][2] * b[2][0]) +
                 b[0][2] * (b[1][0] * b[2][1] - b[1][1] * b[2][0]);
    if (std::fabs(det) < 1e-12) throw std::runtime_error("periodic lattice vectors are degenerate");
    // inv = basis^-1 (row-vector convention: frac = r . inv)
    inv_[0][0] = (b[1][1] * b[2][2] - b[1][2] * b[2][1]) / det;
    inv_[0][1] = (b[0][2] * b[2][1] - b[0][1] * b[2][2]) / det;
    inv_[0][2] = (b[0][1] * b[1][2] - b[0][2] * b[1][1]) / det;
    inv_[1][0] = (b[1][2] * b[2][0] - b[1][0] * b[2][2]) / det;
    inv_[1][1] = (b[0][0] * b[2][2] - b[0][2] * b[2][0]) / det;
    inv_[1][2] = (b[0][2] * b[1][0] - b[0][0] * b[1][2]) / det;
    inv_[2][0] = (b[1][0] * b[2][1] - b[1][1] * b[2][0]) / det;
    inv_[2][1] = (b[0][1] * b[2][0] - b[0][0] * b[2][1]) / det;
    inv_[2][2] = (b[0][0] * b[1][1] - b[0][1] * b[1][0]) / det;
    for (int k = 0; k < 3; ++k) {
      double rn = std::sqrt(inv_[0][k] * inv_[0][k] + inv_[1][k] * inv_[1][k] + inv_[2][k] * inv_[2][k]);
      nimg_[k] = pbc_[k] ? int(std::ceil(cutoff / (1.0 / rn))) + 1 : 0;
    }
  }

  // Wrap into [0,1) along periodic axes (a lattice translation: edge vectors are unchanged).
  Vec3 wrap(const Vec3& r) const {
    Vec3 out = r;
    for (int k = 0; k < 3; ++k) {
      if (!pbc_[k]) continue;
      double f = r[0] * inv_[0][k] + r[1] * inv_[1][k] + r[2] * inv_[2][k];
      double s = std::floor(f);
      for (int j = 0; j < 3; ++j) out[j] -= s * basis_[k][j];
    }
    return out;
  }

  // Edges atom -> query with |vec| <= cutoff; exclude_self drops (atom i -> query i) at zero image.
  Edges search(const std::vector<Vec3>& atoms, const std::vector<Vec3>& queries, bool exclude_self) const {
    Edges out;
    if (atoms.empty() || queries.empty()) return out;
    std::vector<Vec3> q(queries.size());
    Vec3 lo{1e300, 1e300, 1e300}, hi{-1e300, -1e300, -1e300};
    for (size_t i = 0; i < queries.size(); ++i) {
      q[i] = wrap(queries[i]);
      for (int j = 0; j < 3; ++j) lo[j] = std::min(lo[j], q[i][j] - cutoff_), hi[j] = std::max(hi[j], q[i][j] + cutoff_);
    }
    struct Rep {
      Vec3 r;
      int64_t atom;
      bool zero_image;
    };
    std::vector<Rep> reps;
    for (size_t a = 0; a < atoms.size(); ++a) {
      Vec3 w = wrap(atoms[a]);
      for (int i = -nimg_[0]; i <= nimg_[0]; ++i)
        for (int j = -nimg_[1]; j <= nimg_[1]; ++j)
          for (int k = -nimg_[2]; k <= nimg_[2]; ++k) {
            Vec3 r;
            for (int d = 0; d < 3; ++d) r[d] = w[d] + i * basis_[0][d] + j * basis_[1][d] + k * basis_[2][d];
            if (r[0] < lo[0] || r[1] < lo[1] || r[2] < lo[2] || r[0] > hi[0] || r[1] > hi[1] || r[2] > hi[2]) continue;
            reps.push_back({r, int64_t(a), i == 0 && j == 0 && k == 0});
          }
    }
    // cell list: cubic bins of edge `cutoff` over the query box
    auto key = [&](const Vec3& r, int di, int dj, int dk) {
      int64_t b[3];
      int d3[3] = {di, dj, dk};
      for (int d = 0; d < 3; ++d) b[d] = int64_t(std::floor((r[d] - lo[d]) / cutoff_)) + d3[d];
      return (b[0] * 2097152 + b[1]) * 2097152 + b[2];
    };
    std::unordered_map<int64_t, std::vector<int>> bins;
    for (size_t r = 0; r < reps.size(); ++r) bins[key(reps[r].r, 0, 0, 0)].push_back(int(r));
    const double c2 = cutoff_ * cutoff_;
    for (size_t i = 0; i < q.size(); ++i)
      for (int di = -1; di <= 1; ++di)
        for (int dj = -1; dj <= 1; ++dj)
          for (int dk = -1; dk <= 1; ++dk) {
            auto it = bins.find(key(q[i], di, dj, dk));
            if (it == bins.end()) continue;
            for (int r : it->second) {
              const Rep& p = reps[size_t(r)];
              Vec3 v{q[i][0] - p.r[0], q[i][1] - p.r[1], q[i][2] - p.r[2]};
              double d2 = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
              if (d2 > c2) continue;
              if (exclude_self && p.zero_image && p.atom == int64_t(i)) continue;
              out.sender.push_back(p.atom);
              out.receiver.push_back(int64_t(i));
              out.vec.insert(out.vec.end(), v.begin(), v.end());
            }
          }
    return out;
  }

 private:
  double cutoff_;
  bool pbc_[3];
  std::array<Vec3, 3> basis_;
  double inv_[3][3];
  int nimg_[3];
};

// ---------------------------------------------------------------- onnxruntime
std::string meta_value(Ort::Session& s, const char* key) {
  Ort::AllocatorWithDefaultOptions alloc;
  Ort::ModelMetadata m = s.GetModelMetadata();
  auto v = m.LookupCustomMetadataMapAllocated(key, alloc);
  return v ? std::string(v.get()) : std::string();
}

std::vector<std::string> input_names(Ort::Session& s) {
  Ort::AllocatorWithDefaultOptions alloc;
  std::vector<std::string> out;
  for (size_t i = 0; i < s.GetInputCount(); ++i) out.emplace_back(s.GetInputNameAllocated(i, alloc).get());
  return out;
}

std::vector<std::string> output_names(Ort::Session& s) {
  Ort::AllocatorWithDefaultOptions alloc;
  std::vector<std::string> out;
  for (size_t i = 0; i < s.GetOutputCount(); ++i) out.emplace_back(s.GetOutputNameAllocated(i, alloc).get());
  return out;
}

std::vector<const char*> cstrs(const std::vector<std::string>& v) {
  std::vector<const char*> out;
  for (auto& s : v) out.push_back(s.c_str());
  return out;
}

struct Options {
  int64_t batch = 0;  // 0: example.json's probe_batch is not parsed; default below
  int workers = 2;
  double check = -1.0;
};

template <typename T>
int run(Ort::Session& enc, Ort::Session& dec, const std::vector<int64_t>& numbers, const std::vector<Vec3>& pos,
        const std::vector<Vec3>& probes, const Frame& frame, const Options& opt, std::vector<double>& density, int& width) {
  Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  // encoder: atom graph -> per-layer atom features (once per structure)
  Edges ae = frame.search(pos, pos, true);
  const int64_t n = int64_t(numbers.size()), e = int64_t(ae.sender.size());
  std::vector<int64_t> ei(size_t(2 * e) + 1);
  std::copy(ae.sender.begin(), ae.sender.end(), ei.begin());
  std::copy(ae.receiver.begin(), ae.receiver.end(), ei.begin() + e);
  std::vector<T> ev(ae.vec.begin(), ae.vec.end());
  ev.push_back(T(0));
  std::vector<int64_t> nums(numbers);
  std::array<int64_t, 1> sn{n};
  std::array<int64_t, 2> sei{2, e}, sev{e, 3};
  std::vector<Ort::Value> enc_in;
  enc_in.push_back(Ort::Value::CreateTensor<int64_t>(mem, nums.data(), size_t(n), sn.data(), 1));
  enc_in.push_back(Ort::Value::CreateTensor<int64_t>(mem, ei.data(), size_t(2 * e), sei.data(), 2));
  enc_in.push_back(Ort::Value::CreateTensor<T>(mem, ev.data(), size_t(3 * e), sev.data(), 2));
  auto enc_in_names = input_names(enc);
  auto enc_out_names = output_names(enc);
  auto ein = cstrs(enc_in_names), eout = cstrs(enc_out_names);
  auto layers = enc.Run(Ort::RunOptions{nullptr}, ein.data(), enc_in.data(), enc_in.size(), eout.data(), eout.size());
  std::map<std::string, std::pair<std::vector<T>, std::vector<int64_t>>> feats;
  for (size_t i = 0; i < layers.size(); ++i) {
    auto info = layers[i].GetTensorTypeAndShapeInfo();
    auto shape = info.GetShape();
    const T* p = layers[i].GetTensorData<T>();
    feats[enc_out_names[i]] = {std::vector<T>(p, p + info.GetElementCount()), shape};
  }
  std::cerr << "encoder: " << n << " atoms, " << e << " edges, " << layers.size() << " layers\n";

  // decoder: per probe batch, batches spread over `workers` threads (one intra-op thread each)
  auto dec_in_names = input_names(dec);
  auto dec_out_names = output_names(dec);
  auto din = cstrs(dec_in_names), dout = cstrs(dec_out_names);
  const int64_t m = int64_t(probes.size()), step = opt.batch > 0 ? opt.batch : 8;
  const int64_t nb = (m + step - 1) / step;
  std::vector<std::vector<double>> outs(static_cast<size_t>(nb));
  std::vector<int64_t> batch_edges(static_cast<size_t>(nb), 0);
  std::atomic<int64_t> next{0};
  std::vector<std::string> errors(size_t(opt.workers));
  auto worker = [&](int w) {
    try {
      for (int64_t b = next++; b < nb; b = next++) {
        std::vector<Vec3> pts(probes.begin() + b * step, probes.begin() + std::min(m, (b + 1) * step));
        Edges pe = frame.search(pos, pts, false);
        const int64_t k = int64_t(pts.size()), ep = int64_t(pe.sender.size());
        batch_edges[size_t(b)] = ep;
        std::vector<int64_t> pei(size_t(2 * ep) + 1);
        std::copy(pe.sender.begin(), pe.sender.end(), pei.begin());
        std::copy(pe.receiver.begin(), pe.receiver.end(), pei.begin() + ep);
        std::vector<T> pev(pe.vec.begin(), pe.vec.end());
        pev.push_back(T(0));
        std::vector<T> slots(size_t(k) + 1, T(0));
        std::array<int64_t, 2> spei{2, ep}, spev{ep, 3};
        std::array<int64_t, 1> sk{k};
        std::vector<Ort::Value> in;
        for (auto& name : dec_in_names) {
          auto it = feats.find(name);
          if (it != feats.end()) {
            auto& f = it->second;
            in.push_back(Ort::Value::CreateTensor<T>(mem, f.first.data(), f.first.size(), f.second.data(), f.second.size()));
          } else if (name == "probe_edge_index") {
            in.push_back(Ort::Value::CreateTensor<int64_t>(mem, pei.data(), size_t(2 * ep), spei.data(), 2));
          } else if (name == "probe_edge_vec") {
            in.push_back(Ort::Value::CreateTensor<T>(mem, pev.data(), size_t(3 * ep), spev.data(), 2));
          } else if (name == "probe_slots") {
            in.push_back(Ort::Value::CreateTensor<T>(mem, slots.data(), size_t(k), sk.data(), 1));
          } else {
            throw std::runtime_error("decoder input '" + name + "' is not known to this program");
          }
        }
        auto res = dec.Run(Ort::RunOptions{nullptr}, din.data(), in.data(), in.size(), dout.data(), dout.size());
        auto info = res[0].GetTensorTypeAndShapeInfo();
        const T* p = res[0].GetTensorData<T>();
        outs[size_t(b)].assign(p, p + info.GetElementCount());
        auto shape = info.GetShape();
        width = shape.size() == 2 ? int(shape[1]) : 1;
      }
    } catch (const std::exception& ex) {
      errors[size_t(w)] = ex.what();
    }
  };
  std::vector<std::thread> pool;
  for (int w = 0; w < opt.workers; ++w) pool.emplace_back(worker, w);
  for (auto& t : pool) t.join();
  for (auto& err : errors)
    if (!err.empty()) throw std::runtime_error(err);
  int64_t empty = 0;
  for (int64_t b = 0; b < nb; ++b) {
    density.insert(density.end(), outs[size_t(b)].begin(), outs[size_t(b)].end());
    empty += batch_edges[size_t(b)] == 0;
  }
  std::cerr << "decoder: " << m << " probes in " << nb << " batches of " << step << " (" << empty << " with no edges), "
            << opt.workers << " workers\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: " << argv[0] << " EXPORT_DIR EXAMPLE_DIR OUT.npy [--batch K] [--workers W] [--check TOL] [--custom-ops LIB]\n";
    return 2;
  }
  const std::string model_dir = argv[1], ex_dir = argv[2], out_path = argv[3];
  std::string custom_ops;
  Options opt;
  if ((argc - 4) % 2 != 0) {
    std::cerr << "error: option " << argv[argc - 1] << " needs a value\n";
    return 2;
  }
  for (int i = 4; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--batch") opt.batch = std::stoll(argv[i + 1]);
    else if (a == "--workers") opt.workers = std::max(1, std::stoi(argv[i + 1]));
    else if (a == "--check") opt.check = std::stod(argv[i + 1]);
    else if (a == "--custom-ops") custom_ops = argv[i + 1];
    else {
      std::cerr << "unknown option " << a << "\n";
      return 2;
    }
  }
  try {
    auto numbers = npy_values<int64_t>(read_npy(ex_dir + "/numbers.npy"), "<i8", "numbers");
    auto posv = npy_values<double>(read_npy(ex_dir + "/positions.npy"), "<f8", "positions");
    auto cell = npy_values<double>(read_npy(ex_dir + "/cell.npy"), "<f8", "cell");
    auto pbc = npy_values<int64_t>(read_npy(ex_dir + "/pbc.npy"), "<i8", "pbc");
    auto prv = npy_values<double>(read_npy(ex_dir + "/probes.npy"), "<f8", "probes");
    if (posv.size() != 3 * numbers.size() || cell.size() != 9 || pbc.size() != 3 || prv.size() % 3 != 0)
      throw std::runtime_error("example inputs have inconsistent shapes");
    std::vector<Vec3> pos(numbers.size()), probes(prv.size() / 3);
    for (size_t i = 0; i < pos.size(); ++i) pos[i] = {posv[3 * i], posv[3 * i + 1], posv[3 * i + 2]};
    for (size_t i = 0; i < probes.size(); ++i) probes[i] = {prv[3 * i], prv[3 * i + 1], prv[3 * i + 2]};

    Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "cdp");
    Ort::SessionOptions so;
    so.SetIntraOpNumThreads(1);  // ScatterND(add) races with more intra-op threads (onnxruntime #18048, #23396)
    so.SetInterOpNumThreads(1);
    so.AddConfigEntry("session.intra_op.allow_spinning", "0");
    if (!custom_ops.empty()) so.RegisterCustomOpsLibrary(custom_ops.c_str());
    Ort::Session enc(env, (model_dir + "/encoder.onnx").c_str(), so);
    Ort::Session dec(env, (model_dir + "/decoder.onnx").c_str(), so);

    // refuse artifacts whose embedded metadata does not fit this program or the structure
    for (Ort::Session* s : {&enc, &dec}) {
      if (meta_value(*s, "cdp.format_version") != "1")
        throw std::runtime_error("unsupported cdp export format version '" + meta_value(*s, "cdp.format_version") + "'");
    }
    const std::string cut_s = meta_value(enc, "cdp.cutoff");
    if (cut_s.empty() || cut_s != meta_value(dec, "cdp.cutoff")) throw std::runtime_error("encoder/decoder cutoffs missing or different");
    const double cutoff = std::stod(cut_s);
    std::set<int64_t> elements;
    {
      std::stringstream ss(meta_value(enc, "cdp.elements"));
      std::string tok;
      while (std::getline(ss, tok, ',')) elements.insert(std::stoll(tok));
    }
    for (auto z : numbers)
      if (!elements.count(z)) throw std::runtime_error("element " + std::to_string(z) + " is not covered by the exported model");

    Frame frame(cell, pbc, cutoff);
    std::cerr << "onnxruntime " << Ort::GetVersionString() << ", cutoff " << cutoff << " A\n";
    auto type = enc.GetInputTypeInfo(2).GetTensorTypeAndShapeInfo().GetElementType();
    std::vector<double> density;
    int width = 1;
    if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
      run<float>(enc, dec, numbers, pos, probes, frame, opt, density, width);
    else if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE)
      run<double>(enc, dec, numbers, pos, probes, frame, opt, density, width);
    else
      throw std::runtime_error("edge_vec must be float32 or float64");
    std::vector<int64_t> shape{int64_t(probes.size())};
    if (width == 2) shape.push_back(2);
    write_npy(out_path, density, shape);
    std::cerr << "wrote " << out_path << "\n";

    if (opt.check >= 0) {
      auto ref = npy_values<double>(read_npy(ex_dir + "/density.npy"), "<f8", "density");
      if (ref.size() != density.size()) throw std::runtime_error("reference density has a different size");
      double maxref = 0, maxdiff = 0;
      for (size_t i = 0; i < ref.size(); ++i) {
        maxref = std::max(maxref, std::fabs(ref[i]));
        maxdiff = std::max(maxdiff, std::fabs(ref[i] - density[i]));
      }
      double rel = maxref > 0 ? maxdiff / maxref : maxdiff;
      std::cout << "max |rho_cpp - rho_torch| = " << maxdiff << " (" << rel << " of max |rho| = " << maxref << ")\n";
      if (!(rel <= opt.check)) {
        std::cerr << "FAILED: relative error " << rel << " > " << opt.check << "\n";
        return 1;
      }
      std::cout << "OK (<= " << opt.check << ")\n";
    }
  } catch (const Ort::Exception& ex) {
    std::cerr << "onnxruntime error: " << ex.what() << "\n";
    return 1;
  } catch (const std::exception& ex) {
    std::cerr << "error: " << ex.what() << "\n";
    return 1;
  }
  return 0;
}
