"""Geography and science facts: capitals, chemical symbols, the solar system."""

# (country as written in a sentence, accepted capital spellings). Countries with two
# capitals or a disputed/renamed capital are left out so every check has one answer.
CAPITALS = [
    ("France", ["Paris"]), ("Peru", ["Lima"]), ("Japan", ["Tokyo"]), ("Italy", ["Rome"]),
    ("Spain", ["Madrid"]), ("Germany", ["Berlin"]), ("the United Kingdom", ["London"]),
    ("Russia", ["Moscow"]), ("China", ["Beijing", "Peking"]), ("Egypt", ["Cairo"]),
    ("Greece", ["Athens"]), ("Canada", ["Ottawa"]), ("Australia", ["Canberra"]),
    ("India", ["New Delhi", "Delhi"]), ("Brazil", ["Brasilia", "Brasília"]),
    ("Argentina", ["Buenos Aires"]), ("Mexico", ["Mexico City"]), ("Kenya", ["Nairobi"]),
    ("Ireland", ["Dublin"]), ("Portugal", ["Lisbon"]), ("Norway", ["Oslo"]),
    ("Sweden", ["Stockholm"]), ("Finland", ["Helsinki"]), ("Denmark", ["Copenhagen"]),
    ("Poland", ["Warsaw"]), ("Austria", ["Vienna"]), ("Hungary", ["Budapest"]),
    ("the Czech Republic", ["Prague"]), ("Belgium", ["Brussels"]),
    ("the Netherlands", ["Amsterdam"]), ("Switzerland", ["Bern", "Berne"]),
    ("Turkey", ["Ankara"]), ("Iran", ["Tehran"]), ("Iraq", ["Baghdad"]),
    ("Thailand", ["Bangkok"]), ("Vietnam", ["Hanoi"]), ("South Korea", ["Seoul"]),
    ("Indonesia", ["Jakarta"]), ("the Philippines", ["Manila"]), ("Cuba", ["Havana"]),
    ("Chile", ["Santiago"]), ("Colombia", ["Bogota", "Bogotá"]), ("Venezuela", ["Caracas"]),
    ("Ecuador", ["Quito"]), ("Nigeria", ["Abuja"]), ("Ghana", ["Accra"]),
    ("Ethiopia", ["Addis Ababa"]), ("Morocco", ["Rabat"]), ("Saudi Arabia", ["Riyadh"]),
    ("Pakistan", ["Islamabad"]), ("Bangladesh", ["Dhaka"]), ("Nepal", ["Kathmandu"]),
    ("Afghanistan", ["Kabul"]), ("Ukraine", ["Kyiv", "Kiev"]), ("Romania", ["Bucharest"]),
    ("Bulgaria", ["Sofia"]), ("Serbia", ["Belgrade"]), ("Croatia", ["Zagreb"]),
    ("Iceland", ["Reykjavik", "Reykjavík"]), ("Scotland", ["Edinburgh"]), ("Wales", ["Cardiff"]),
    ("New Zealand", ["Wellington"]), ("Jamaica", ["Kingston"]), ("Uruguay", ["Montevideo"]),
    ("Paraguay", ["Asuncion", "Asunción"]), ("Malaysia", ["Kuala Lumpur"]),
    ("Mongolia", ["Ulaanbaatar", "Ulan Bator"]), ("Syria", ["Damascus"]), ("Lebanon", ["Beirut"]),
    ("Jordan", ["Amman"]), ("Qatar", ["Doha"]), ("Libya", ["Tripoli"]), ("Tunisia", ["Tunis"]),
    ("Algeria", ["Algiers"]), ("Sudan", ["Khartoum"]), ("Uganda", ["Kampala"]),
    ("Zimbabwe", ["Harare"]), ("Senegal", ["Dakar"]), ("Estonia", ["Tallinn"]),
    ("Latvia", ["Riga"]), ("Lithuania", ["Vilnius"]), ("Slovakia", ["Bratislava"]),
    ("Slovenia", ["Ljubljana"]), ("Albania", ["Tirana"]), ("Cyprus", ["Nicosia"]),
    ("Malta", ["Valletta"]), ("Cambodia", ["Phnom Penh"]), ("Laos", ["Vientiane"]),
    ("North Korea", ["Pyongyang"]), ("the United States", ["Washington"]),
    ("Panama", ["Panama City"]), ("Costa Rica", ["San Jose", "San José"]),
    ("Nicaragua", ["Managua"]), ("Guatemala", ["Guatemala City"]), ("Haiti", ["Port-au-Prince"]),
    ("the Dominican Republic", ["Santo Domingo"]), ("Georgia", ["Tbilisi"]),
    ("Armenia", ["Yerevan"]), ("Azerbaijan", ["Baku"]), ("Uzbekistan", ["Tashkent"]),
    ("Belarus", ["Minsk"]), ("Moldova", ["Chisinau", "Chișinău"]),
]

# (element, symbol). Symbols that are common English words ("I" for iodine) are left out:
# a whole-word match on them would pass almost any answer.
ELEMENTS = [
    ("gold", "Au"), ("silver", "Ag"), ("iron", "Fe"), ("oxygen", "O"), ("hydrogen", "H"),
    ("carbon", "C"), ("nitrogen", "N"), ("helium", "He"), ("sodium", "Na"),
    ("potassium", "K"), ("copper", "Cu"), ("lead", "Pb"), ("tin", "Sn"), ("zinc", "Zn"),
    ("calcium", "Ca"), ("neon", "Ne"), ("chlorine", "Cl"), ("sulfur", "S"), ("mercury", "Hg"),
    ("uranium", "U"), ("magnesium", "Mg"), ("aluminum", "Al"), ("silicon", "Si"),
    ("nickel", "Ni"), ("platinum", "Pt"), ("fluorine", "F"), ("lithium", "Li"),
]

# (topic slug, question, sentence stem for completion, accepted answers)
SPACE = [
    ("closest-planet", "Which planet is closest to the Sun?", "The planet closest to the Sun is", ["Mercury"]),
    ("largest-planet", "What is the largest planet in our solar system?", "The largest planet in our solar system is", ["Jupiter"]),
    ("red-planet", "Which planet is known as the Red Planet?", "The planet known as the Red Planet is", ["Mars"]),
    ("ringed-planet", "Which planet is famous for its bright rings?", "The planet famous for its bright rings is", ["Saturn"]),
    ("home-planet", "On which planet do people live?", "The planet that people live on is called", ["Earth"]),
    ("hottest-planet", "Which planet is the hottest in our solar system?", "The hottest planet in our solar system is", ["Venus"]),
    ("farthest-planet", "Which planet is farthest from the Sun?", "The planet farthest from the Sun is", ["Neptune"]),
    ("planet-count", "How many planets are in our solar system?", "There are ___ planets in our solar system.", ["8", "eight"]),
    ("moon", "What is the name of the natural satellite that orbits the Earth?", "The natural satellite that orbits the Earth is called the", ["Moon"]),
    ("center-star", "What star is at the center of our solar system?", "The star at the center of our solar system is the", ["Sun"]),
    ("daylight-star", "What gives the Earth light during the day?", "During the day the Earth gets its light from the", ["Sun", "sunlight"]),
    ("galaxy", "What is the name of the galaxy we live in?", "The galaxy we live in is called the", ["Milky Way"]),
    ("moon-walk", "Who was the first person to walk on the Moon?", "The first person to walk on the Moon was", ["Armstrong"]),
    ("earth-shape", "What shape is the Earth?", "The shape of the Earth is roughly a", ["sphere", "round", "ball", "globe", "spherical"]),
    ("rotation", "How many hours does it take the Earth to spin around once?", "The Earth takes about ___ hours to spin around once.", ["24", "twenty-four", "twenty four"]),
]
