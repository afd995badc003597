"""Starting DFT from a predicted density: PySCF initial guesses (``initial_guess``) and guess comparisons.

``initial_guess(mol_or_mf, predictor) -> dm0``; ``recipe_mol(atoms)`` builds the data recipe's molecule.
"""

from cdp.data.molecules import recipe_mf, recipe_mol
from cdp.dft.guess import Guess, GuessInfo, atoms_from_mol, density_guess, initial_guess

__all__ = ["Guess", "GuessInfo", "atoms_from_mol", "density_guess", "initial_guess", "recipe_mf", "recipe_mol"]
