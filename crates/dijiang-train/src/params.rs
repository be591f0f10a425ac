//! Parameters by name. Burn identifies parameters by `ParamId`s, which are fresh every time a model
//! is loaded; checkpoints, trainable selections and optimizer state need names that survive a
//! restart: Burn's module paths without enum variants, the names our saved models use.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::backend::AutodiffBackend;

/// Tracks the dotted path of the module being visited, leaving out enum variants.
#[derive(Debug, Default)]
pub(crate) struct PathTracker(Vec<String>);

impl PathTracker {
    pub(crate) fn enter(&mut self, name: &str, container: &str) {
        if !container.starts_with("Enum:") {
            self.0.push(name.to_string());
        }
    }

    pub(crate) fn exit(&mut self, container: &str) {
        if !container.starts_with("Enum:") {
            self.0.pop();
        }
    }

    pub(crate) fn name(&self) -> String {
        self.0.join(".")
    }
}

/// One float parameter.
#[derive(Debug, Clone)]
pub struct ParamInfo {
    pub name: String,
    pub id: ParamId,
    pub shape: Vec<usize>,
    pub trainable: bool,
}

impl ParamInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

struct Collect {
    path: PathTracker,
    out: Vec<ParamInfo>,
}

impl<B: Backend> ModuleVisitor<B> for Collect {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }

    fn exit_module(&mut self, _: &str, container: &str) {
        self.path.exit(container);
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        self.out.push(ParamInfo {
            name: self.path.name(),
            id: param.id,
            shape: value.dims().to_vec(),
            trainable: value.is_require_grad(),
        });
    }
}

/// Every float parameter of `module`, in visiting order (deterministic).
pub fn params<B: Backend, M: Module<B>>(module: &M) -> Vec<ParamInfo> {
    let mut visitor = Collect { path: PathTracker::default(), out: Vec::new() };
    module.visit(&mut visitor);
    visitor.out
}

struct Values<B: Backend>(Vec<Tensor<B, 1>>);

impl<B: Backend> ModuleVisitor<B> for Values<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        let n = value.shape().num_elements();
        self.0.push(value.reshape([n]));
    }
}

/// Every float parameter's values of `module`, flattened, in visiting order (as [`params`]).
pub fn flat_values<B: Backend, M: Module<B>>(module: &M) -> Vec<Tensor<B, 1>> {
    let mut visitor = Values(Vec::new());
    module.visit(&mut visitor);
    visitor.0
}

/// A mapping of float parameters by name: what [`map_named`] applies to every parameter of a
/// module, tracking the names (the one owner of that bookkeeping for every mapper here).
pub(crate) trait NamedMap<B: Backend> {
    fn map<const D: usize>(&mut self, name: &str, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>>;
}

struct Named<'a, T> {
    path: PathTracker,
    map: &'a mut T,
}

impl<B: Backend, T: NamedMap<B>> ModuleMapper<B> for Named<'_, T> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }

    fn exit_module(&mut self, _: &str, container: &str) {
        self.path.exit(container);
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        self.map.map(&self.path.name(), param)
    }
}

/// `module` with `map` applied to every float parameter, with its name.
pub(crate) fn map_named<B: Backend, M: Module<B>>(module: M, map: &mut impl NamedMap<B>) -> M {
    module.map(&mut Named { path: PathTracker::default(), map })
}

struct SetTrainable<'a> {
    trainable: &'a dyn Fn(&str) -> bool,
}

impl<B: AutodiffBackend> NamedMap<B> for SetTrainable<'_> {
    fn map<const D: usize>(&mut self, name: &str, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.set_require_grad((self.trainable)(name))
    }
}

struct Store<'a> {
    dtype: DType,
    which: &'a dyn Fn(&str) -> bool,
    /// The parameters whose values the cast changed (not values of that precision).
    rounded: Vec<String>,
}

impl<B: AutodiffBackend> NamedMap<B> for Store<'_> {
    fn map<const D: usize>(&mut self, name: &str, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        if D < 2 || tensor.dtype() == self.dtype || !(self.which)(name) {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        // A frozen constant: cast outside autodiff, no gradient.
        let value = tensor.inner();
        let stored = value.clone().cast(self.dtype);
        if !stored.clone().cast(value.dtype()).equal(value).all().into_scalar().to_bool() {
            self.rounded.push(name.to_string());
        }
        Param::from_mapped_value(id, Tensor::from_inner(stored), mapper)
    }
}

/// `module` with the matrices (embeddings, projections) for which `which(name)` holds stored in
/// `dtype`, as constants to autodiff (the layers cast them to the activations' type at use), and
/// the names of those whose values the cast rounded (exact for a checkpoint in that precision).
pub fn set_storage<B: AutodiffBackend, M: Module<B>>(
    module: M,
    dtype: DType,
    which: &dyn Fn(&str) -> bool,
) -> (M, Vec<String>) {
    let mut store = Store { dtype, which, rounded: Vec::new() };
    let module = map_named(module, &mut store);
    (module, store.rounded)
}

/// `module` with exactly the parameters for which `trainable(name)` holds requiring gradients:
/// the others are constants to autodiff (no gradient is computed for them).
pub fn set_trainable<B: AutodiffBackend, M: Module<B>>(module: M, trainable: &dyn Fn(&str) -> bool) -> M {
    map_named(module, &mut SetTrainable { trainable })
}
