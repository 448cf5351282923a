//! Sample inputs for measuring the range of every linear's input before packing the
//! weights in int8 ([`crate::Bert::into_int8`]). Outlier channels are a property of
//! the model, not of the text, so a small mix of registers and lengths suffices:
//! scientific claims and abstracts, web questions, product text, code and numbers,
//! non-English text.

pub(crate) const TEXTS: &[&str] = &[
    "This is an example sentence",
    "Each sentence is converted",
    "Hello world",
    "what is the capital of australia",
    "how long does it take to boil an egg?",
    "0-dimensional biomaterials show inductive properties.",
    "Vitamin D deficiency is associated with an increased risk of tuberculosis in HIV-infected adults.",
    "Microstructural development of human newborn cerebral white matter assessed in vivo by diffusion tensor magnetic resonance imaging. Alterations of architecture of cerebral white matter in the developing human brain can affect cortical development and result in functional disabilities. A line scan diffusion-weighted magnetic resonance imaging (MRI) sequence with diffusion tensor analysis was applied to measure the apparent diffusion coefficient, to calculate relative anisotropy, and to delineate three-dimensional fiber architecture in cerebral white matter in preterm (n = 17) and full-term infants (n = 7).",
    "The randomized controlled trial enrolled 1,204 patients (mean age 63.2 ± 9.1 years); the primary endpoint, a composite of death or hospitalization, occurred in 12.4% vs. 15.9% (hazard ratio 0.76; 95% CI, 0.61-0.94; P = .01).",
    "Stainless steel 18/10 saucepan with glass lid, 2.5 L, induction compatible, dishwasher safe. Free delivery on orders over $50!",
    "fn main() { let v: Vec<u32> = (0..10).map(|x| x * x).collect(); println!(\"{:?}\", v); }",
    "SELECT id, name FROM users WHERE created_at > '2021-01-01' ORDER BY name LIMIT 20;",
    "Der schnelle braune Fuchs springt über den faulen Hund. Les élèves étudient à la bibliothèque.",
    "東京は日本の首都です。 Москва — столица России.",
    "BRCA1 and BRCA2 mutations confer a high lifetime risk of breast and ovarian cancer; PARP inhibitors exploit homologous-recombination deficiency.",
    "I ordered the blue one but received a green one, and customer service never answered my emails.",
    "The committee will meet on Tuesday at 10:30 a.m. in room 4B to review the budget proposal for fiscal year 2025.",
    "Photosynthesis converts light energy into chemical energy, producing glucose and oxygen from carbon dioxide and water.",
    "@john_doe lol that game last night was insane!!! #playoffs",
    "Q: Is coffee bad for your heart? A: Moderate consumption (3-4 cups a day) is not associated with increased cardiovascular risk in most studies.",
    "Section 3(b): The licensee shall not sublicense, assign or transfer any rights granted herein without prior written consent.",
    "a",
    "?",
    "CRISPR–Cas9 genome editing in human embryos raises ethical concerns regarding germline modification, mosaicism and off-target effects.",
];
